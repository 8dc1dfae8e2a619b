"""System prompts: which system message a built row's `prompt` carries (`--system-prompt`).

A model is scored and trained in the conversation format it was trained in. LLaVA-1.5 was
trained with the Vicuna v1 system prompt; the mDPO authors' json carries it in every prompt.
The choice is stored as a system message in the `prompt` column (TRL's conversational format),
so the scorer, the trainer, TRL and the Hub all see the same conversation.

Specs:
  auto   the source's own system prompt where it has one (the mDPO json, TRL rows with a
         system message), else the training system prompt of the reference model's family if
         it is known (`FAMILIES`; needs --ref-model or --rejected-response-model), else none.
         Without a model or a source prompt this is `none`: builds keep their bytes. `score`
         with a model of a known family on such a build refuses (`unapplied_family`) and
         prints the build command that stores the family's prompt.
  none   no system message, even where the source has one.
  TEXT   this exact text for every row.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

# LLaVA's `conv_vicuna_v1` (llava/conversation.py): LLaVA-1.5 was fine-tuned with `--version v1`,
# which selects it, and the mDPO authors' json carries it. (`conv_llava_v1`, "a curious human ...
# the human's questions", is the LLaVA-1.0 template; LLaVA-1.5 never saw it.)
VICUNA_V1 = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
             "gives helpful, detailed, and polite answers to the user's questions.")

# InternVL2.5 / InternVL3: the default system message of their `internvl2_5` conversation
# template (the -hf checkpoints' chat template adds none, so without it a row is off-distribution).
INTERNVL2_5 = ("你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
               "多模态大语言模型。")

# family: (training system prompt, lower-case substrings of model ids that identify it)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "vicuna_v1": (VICUNA_V1, ("llava-1.5", "llava-v1.5", "llava-v1.6-vicuna", "llava-1.6-vicuna",
                              "vicuna")),
    "internvl2_5": (INTERNVL2_5, ("internvl2_5", "internvl2.5", "internvl3-")),
}
# Architectures that identify a family by themselves: the original LLaVA code's Llama model is
# LLaVA-1.5/1.6 on Vicuna.
FAMILY_ARCHITECTURES = {"LlavaLlamaForCausalLM": "vicuna_v1"}
_CONFIG_BYTES = 10 * 1024 * 1024  # a config.json is a few KB


def model_family(model: str | None) -> str | None:
    """The known family of a model: for a local folder, from its config.json (the base model
    names it records, `_name_or_path` of the model and of its `text_config`, and its
    `architectures`), never from the folder's own name; for a Hub id, from the id."""
    if model and (Path(model).expanduser() / "config.json").is_file():
        return _family_of_config(Path(model).expanduser() / "config.json")
    return _family_of_name(model)


def _family_of_name(name: str | None) -> str | None:
    name = (name or "").lower()
    for family, (_, markers) in FAMILIES.items():
        if any(marker in name for marker in markers):
            return family
    return None


def _family_of_config(path: Path) -> str | None:
    try:
        if path.stat().st_size > _CONFIG_BYTES:
            return None
        config = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(config, dict):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for architecture in [*(config.get("architectures") or []), *(text.get("architectures") or [])]:
        if architecture in FAMILY_ARCHITECTURES:
            return FAMILY_ARCHITECTURES[architecture]
    for name in (text.get("_name_or_path"), config.get("_name_or_path")):
        if isinstance(name, str) and _family_of_name(name):
            return _family_of_name(name)
    return None


def unapplied_family(record: dict[str, Any] | None, model: str) -> str | None:
    """The family of `model` whose training prompt a build's rows lack: the build chose
    `--system-prompt auto` without knowing the model (no --ref-model at build), so rows without
    a source prompt were stored with none. None when nothing is missing."""
    record = record or {}
    if record.get("spec") != "auto" or record.get("model_family"):
        return None
    family = model_family(model)
    return family if family and (record.get("rows_by_origin") or {}).get("none") else None


def choose(spec: str, own: str | None, family: str | None) -> tuple[str | None, str]:
    """(system text or None, where it came from: source | model | given | none)."""
    if spec == "none":
        return None, "none"
    if spec != "auto":
        return spec, "given"
    if own:
        return own, "source"
    if family:
        return FAMILIES[family][0], "model"
    return None, "none"


def apply(spec: str, family: str | None, candidates: list) -> tuple[list, dict[str, Any]]:
    """Candidates with their system prompt set, and the manifest record of the choice."""
    import dataclasses

    out, origins, texts = [], Counter(), Counter()
    for c in candidates:
        text, origin = choose(spec, c.system, family)
        origins[origin] += 1
        if text is not None:
            texts[text] += 1
        out.append(c if text == c.system else dataclasses.replace(c, system=text))
    record = {
        "spec": spec,
        "model_family": family,
        "model_family_prompt": FAMILIES[family][0] if family else None,
        "rows_by_origin": dict(sorted(origins.items())),
        "distinct": len(texts),
        "most_common": texts.most_common(1)[0][0] if texts else None,
    }
    return out, record
