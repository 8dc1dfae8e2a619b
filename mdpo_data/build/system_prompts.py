"""System prompts: which system message a built row's `prompt` carries (`--system-prompt`).

A model is scored and trained in the conversation format it was trained in. LLaVA-1.5 was
trained with the Vicuna v1 system prompt; the mDPO authors' json carries it in every prompt.
The choice is stored as a system message in the `prompt` column (TRL's conversational format),
so the scorer, the trainer, TRL and the Hub all see the same conversation.

Specs:
  auto   the source's own system prompt where it has one (the mDPO json, TRL rows with a
         system message), else the training system prompt of the reference model's family if
         it is known (`FAMILIES`; needs --ref-model or --rejected-response-model), else none.
         Without a model or a source prompt this is `none`: builds keep their bytes.
  none   no system message, even where the source has one.
  TEXT   this exact text for every row.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

VICUNA_V1 = ("A chat between a curious human and an artificial intelligence assistant. The assistant "
             "gives helpful, detailed, and polite answers to the human's questions.")

# InternVL2.5 / InternVL3: the default system message of their `internvl2_5` conversation
# template (the -hf checkpoints' chat template adds none, so without it a row is off-distribution).
INTERNVL2_5 = ("你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
               "多模态大语言模型。")

# family: (training system prompt, lower-case substrings of model ids/paths that identify it)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "vicuna_v1": (VICUNA_V1, ("llava-1.5", "llava-v1.5", "llava-v1.6-vicuna", "llava-1.6-vicuna",
                              "vicuna")),
    "internvl2_5": (INTERNVL2_5, ("internvl2_5", "internvl2.5", "internvl3-")),
}


def model_family(model: str | None) -> str | None:
    """The known family of a model id or local path (by name), or None."""
    name = (model or "").lower()
    for family, (_, markers) in FAMILIES.items():
        if any(marker in name for marker in markers):
            return family
    return None


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
