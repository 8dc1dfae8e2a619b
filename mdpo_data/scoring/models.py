"""Loading a vision-language model and fingerprinting what produced a set of log-probs.

A stored reference log-prob is only valid for the exact weights, processor, chat template,
dtype and length rule that computed it; `fingerprint` records all of them, and its `key` is
what the scorer's resume markers and the trainer's refusal check compare.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from mdpo_data.demo import tiny
from mdpo_data.format.versions import library_versions
from mdpo_data.format.shards import sha256_file

DTYPES = ("auto", "float32", "bfloat16", "float16")
# Attention kernels (transformers' attn_implementation). "auto": transformers' default (sdpa).
# flex_attention runs packed rows with a BlockMask (`mdpo_data.scoring.flex`) where the family has it.
ATTENTION = ("auto", "sdpa", "eager", "flex_attention")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class ModelLoadError(ValueError):
    pass


def _demo_model_path():
    from mdpo_data.demo.model import demo_model_path

    return demo_model_path()


def _demo_prior_model_path():
    from mdpo_data.demo.model import PRIOR_RECIPE, demo_model_path

    return demo_model_path(PRIOR_RECIPE)


# Names that stand for a model built offline and cached (no Hub id can be a bare word like these).
BUILT_IN_MODELS = {
    "tiny": lambda: tiny.tiny_model_path(),  # random weights: the plumbing's smoke test
    "demo": _demo_model_path,  # can see the demo scenes; built on first use (minutes on a CPU)
    "demo-prior": _demo_prior_model_path,  # the same, trained in the world with a language prior
}


def resolve_model(model_id_or_path: str) -> str:
    """A built-in name ("tiny", "demo", "demo-prior") -> its cached folder, built on first use; anything
    else unchanged."""
    built_in = BUILT_IN_MODELS.get(model_id_or_path)
    return str(built_in()) if built_in else model_id_or_path


def resolve_device(device: str = "auto") -> str:
    """"auto": this process's GPU (LOCAL_RANK under `accelerate launch`) if there is one, else CPU."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """"auto": float32 on CPU (exact, and half precision is slow there), bf16 on GPUs with it."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def load_model(
    model_id_or_path: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    attention: str = "auto",
):
    """(model in eval mode on `device`, processor) via AutoModelForImageTextToText/AutoProcessor.

    Remote code runs only with trust_remote_code=True. The resolved dtype is `model.dtype`.
    `attention` (ATTENTION) picks the attention kernel; one the family lacks is a one-line error.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = resolve_model(model_id_or_path)
    device = resolve_device(device)
    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    if attention not in ATTENTION:
        raise ValueError(f"attention {attention!r} is not one of {', '.join(ATTENTION)}")
    options = {"trust_remote_code": trust_remote_code, "revision": revision}
    kernel = {} if attention == "auto" else {"attn_implementation": attention}
    try:
        processor = AutoProcessor.from_pretrained(path, **options)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype, **kernel, **options)
    except (OSError, ValueError, KeyError) as error:
        if kernel and "attention" in str(error).lower():
            first = str(error).splitlines()[0]
            raise ModelLoadError(f"{model_id_or_path}: attention {attention!r} is not available for this "
                                 f"model ({first}); use --attention sdpa") from None
        raise ModelLoadError(_load_hint(model_id_or_path, path, trust_remote_code, error)) from None
    if not (hasattr(processor, "tokenizer") and hasattr(processor, "image_processor")):
        raise ModelLoadError(
            f"{model_id_or_path}: AutoProcessor returned {type(processor).__name__}, not a "
            "multimodal processor (image processor + tokenizer); is this a vision-language model?"
        )
    if tiny.is_smoke_test_model(model):
        warnings.warn(
            f"{model_id_or_path} is a SMOKE-TEST model with random weights: its log-probs are "
            "meaningless; use it only to test the pipeline.",
            stacklevel=2,
        )
    return model.to(device).eval(), processor


def load_text_model(
    name: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
):
    """(text LLM in eval mode on `device`, tokenizer with a pad token) via AutoModelForCausalLM:
    BPO's `inject` rewriter. Same device/dtype rules and error style as `load_model`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    options = {"trust_remote_code": trust_remote_code, "revision": revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **options)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=getattr(torch, resolve_dtype(dtype, device)), **options)
    except (OSError, ValueError, KeyError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(
            f"cannot load inject model {name!r} as a text LLM with AutoModelForCausalLM ({first})"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def _load_hint(given: str, path: str, trust_remote_code: bool, error: Exception) -> str:
    local = Path(path)
    if local.exists() and not (local / "config.json").is_file():
        return f"cannot load model {given!r}: the folder {path} has no config.json"
    if not local.exists() and (given.startswith((".", "/", "~")) or given.count("/") > 1):
        return f"cannot load model {given!r}: no such folder"
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    hint = "" if trust_remote_code else (
        " If the model ships its own code, pass --trust-remote-code (it runs that code)."
    )
    return (
        f"cannot load model {given!r} as a vision-language model ({message}). Expected a local "
        f"folder or a Hub id reachable from here, loadable with AutoModelForImageTextToText.{hint}"
    )


# --------------------------------------------------------------------------- fingerprint


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def weights_sha256(folder: str | Path) -> str:
    """One hash over the weight files of a local checkpoint (names and contents)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise ModelLoadError(f"{folder} holds no weight files ({', '.join(_WEIGHT_SUFFIXES)})")
    for file in files:
        digest.update(f"{file.relative_to(folder).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit of a Hub model already in the local cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - a best-effort lookup; the caller records "unknown"
        return None
    if isinstance(found, str):
        return Path(found).parent.name  # .../snapshots/<commit>/config.json
    return None


def checkpoint_identity(model_id_or_path: str, revision: str | None = None, *,
                        cheap: bool = False) -> str:
    """THE identity of a checkpoint, in two strengths.

    Full (the scorer's fingerprint: a reference log-prob is valid only for exact weights): a
    local folder is the sha256 of its weight files' bytes; a Hub id is repo@commit of the
    local cache (else the revision asked for). `cheap` (BPO's answer-cache key, computed on
    every run): a local folder hashes its small text files (configs, tokenizer, template)
    and only the names and sizes of the rest, not 14 GB of weights; a Hub id is
    repo@revision. Both values are stable across releases: they key resume markers.
    """
    path = Path(resolve_model(model_id_or_path)) if model_id_or_path else None
    if path is not None and path.is_dir():
        return "sha256:" + (_listing_sha256(path) if cheap else weights_sha256(path))
    if cheap:
        return f"{model_id_or_path}@{revision or 'default'}"
    return f"{model_id_or_path}@{_hub_commit(model_id_or_path, revision) or revision or 'unknown'}"


def _listing_sha256(folder: Path) -> str:
    """Hash of a folder's small text files' contents and its other files' names and sizes."""
    parts = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = file.relative_to(folder).as_posix()
        small = file.suffix in (".json", ".jinja", ".txt", ".model") and file.stat().st_size < 50_000_000
        digest = sha256_file(file) if small else file.stat().st_size
        parts.append(f"{name}:{digest}")
    return _sha256_text("\0".join(parts))


def processor_sha256(processor) -> str:
    """Hash of everything in the processor that shapes input ids and pixels (template excluded).

    The fast tokenizer's serialization also holds the padding/truncation settings of its last
    call; they are reset on a copy, so the hash is the same before and after any padded call."""
    config = processor.to_dict()
    tokenizer = processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_padding()
        backend.no_truncation()
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    blob = json.dumps(config, sort_keys=True, default=str) + "\0" + vocab + "\0" + special
    return _sha256_text(blob)


def chat_template_sha256(processor) -> str:
    """Hash of the processor's chat template ("" when it has none): scorer and trainer compare it."""
    return _sha256_text(getattr(processor, "chat_template", None) or "")


def _key(parts: dict[str, Any]) -> str:
    return _sha256_text(json.dumps(parts, sort_keys=True))[:32]


def fingerprint(
    model_id_or_path: str,
    model,
    processor,
    *,
    dtype: str,
    max_length: int | None,
    truncation_rule: str,
    revision: str | None = None,
    response_rule: str | None = None,
    system_prompt: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What produced a set of log-probs, plus two keys.

    `model_key` hashes the model's identity (weights, processor, chat template): the trainer
    compares it to refuse data scored by another model. `key` adds dtype, max length and the
    truncation and response rules: the scorer's resume markers compare it, and the trainer
    refuses data whose `response_rule` is not the current one. `system_prompt` (what the
    build put in the prompts) is recorded, not keyed: the prompts themselves are the data. Library versions are recorded
    but not keyed (a patch release moves values by rounding, not meaning). The model id as
    given is recorded, not keyed, so a moved folder still matches its weights.
    """
    identity = {
        "weights": checkpoint_identity(model_id_or_path, revision),
        "processor_sha256": processor_sha256(processor),
        "chat_template_sha256": chat_template_sha256(processor),
    }
    settings = {"dtype": dtype, "max_length": max_length, "truncation_rule": truncation_rule}
    if response_rule is not None:
        settings["response_rule"] = response_rule
    return {
        "model": model_id_or_path,
        "revision": revision,
        "architecture": type(getattr(model, "module", model)).__name__,
        "smoke_test": tiny.is_smoke_test_model(getattr(model, "module", model)),
        **identity,
        **settings,
        **({"system_prompt": system_prompt} if system_prompt is not None else {}),
        "versions": library_versions("transformers", "torch"),
        "model_key": _key(identity),
        "key": _key({**identity, **settings}),
    }
