"""The training config: one flat dataclass, loaded from YAML and overridden by CLI flags.

Precedence: defaults < `--config` YAML < flags. Keys may use dashes or underscores. Unknown
keys, wrong types and out-of-range values are all collected and reported together, before
anything heavy is imported or loaded. Defaults follow the MDPO paper and its released config.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mdpo_train.losses import LOSSES, TERMS, LossOptions

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
SCHEDULERS = ("cosine", "linear", "constant")
FINETUNE = ("lora", "full")
REPORT_TO = ("none", "tensorboard", "wandb")

# Spot-check tolerance on a summed log-prob, |policy - stored| <= atol + rtol * |stored|.
# Loose enough for kernel/batching noise in that dtype, tight enough to catch another model.
SPOT_CHECK_TOLERANCE = {"fp32": (1e-2, 1e-4), "fp16": (0.25, 5e-3), "bf16": (1.0, 2e-2)}


class ConfigError(ValueError):
    """Every problem found in a config, reported at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid training config:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class TrainConfig:
    # ---- data and output
    shards: str | None = None  # scored build folder (Arrow shards) or Hub export (data/*.parquet)
    output_dir: str | None = None  # run folder: checkpoints, metrics, adapter, card
    resume: str | None = None  # "latest" (newest checkpoint in output_dir) or a checkpoint folder
    # ---- model
    model: str | None = None  # default: the model that scored the reference log-probs
    force_model: bool = False  # train another model on these reference log-probs anyway
    revision: str | None = None  # Hub revision of the model
    trust_remote_code: bool = False  # run the model repository's own code
    dtype: str | None = None  # bf16|fp16|fp32; default: the dtype the reference was scored in
    max_length: int | None = None  # longer examples are dropped, never truncated; default: the scorer's
    finetune: str = "lora"  # lora: adapters on the language model; full: all of the language model
    lora_r: int = 64  # LoRA rank (paper: 64)
    lora_alpha: int = 128  # LoRA alpha (paper: 128)
    lora_dropout: float = 0.05  # LoRA dropout
    lora_target: list[str] | None = None  # e.g. q_proj,v_proj; default: every linear layer of the LM
    gradient_checkpointing: bool = False  # ~30% slower, far less activation memory
    prefix_sharing: bool = True  # y_w and y_l under one image as one sequence (block mask; exact)
    # ---- loss (METHOD.md)
    loss: str = "mdpo"  # mdpo | dpo | mdpo_no_cond | mdpo_no_anchor | sft (needs no reference scores)
    beta: float = 0.1  # reward scale, r = beta (log pi - log pi_ref) (paper: 0.1)
    delta: float = 0.0  # anchor value (paper: 0)
    anchor_rejected: bool = False  # extra term: reward of the rejected response below delta
    anchor_rejected_image: bool = False  # extra term: reward of y_w under the rejected image below delta
    loss_weights: dict[str, float] = field(default_factory=dict)  # per term, e.g. conditional=0.5 (default 1); >0 adds it
    no_image: bool = False  # "DPO (No Image)": text only, against the stored no-image reference log-probs
    # ---- optimization (paper + released config)
    epochs: int = 3  # passes over the train split (paper: 3)
    max_steps: int | None = None  # stop after this many optimizer steps (the schedule ends there)
    global_batch_size: int = 32  # = per-device batch x grad accumulation x processes (paper: 32)
    per_device_batch_size: int = 4  # examples per forward; each is 3 sequences for MDPO
    lr: float = 1e-5  # peak learning rate (paper: 1e-5)
    lr_scheduler: str = "cosine"  # cosine | linear | constant, after linear warmup
    warmup_ratio: float = 0.1  # fraction of the steps spent warming up (paper: 0.1)
    weight_decay: float = 0.05  # AdamW weight decay on matrices (released config: 0.05)
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.98  # AdamW beta2 (released config: 0.98)
    adam_epsilon: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # gradient clipping norm; 0 disables clipping
    seed: int = 42  # data order, LoRA init and dropout
    # ---- loop, logging, outputs
    save_steps: int = 500  # checkpoint every N optimizer steps; 0: no checkpoints
    save_total_limit: int = 2  # keep the newest N checkpoints; 0 keeps all
    eval_steps: int = 0  # evaluate every N steps; 0: at the end of each epoch (if an eval split)
    eval_batch_size: int | None = None  # default: per-device batch size
    logging_steps: int = 1  # write metrics every N steps
    report_to: str = "none"  # none | tensorboard | wandb (through accelerate's trackers)
    spot_check_rows: int = 4  # rows whose stored reference log-probs are recomputed at start; 0 skips
    spot_check_tolerance: float | None = None  # absolute tolerance; default by dtype (SPOT_CHECK_TOLERANCE)
    num_workers: int = 0  # DataLoader worker processes decoding and encoding batches
    merge: bool = False  # also write the LoRA merged into the base weights (RUN/merged)
    progress: bool = True  # tqdm progress bar on the main process

    def loss_options(self) -> LossOptions:
        return LossOptions(
            beta=self.beta,
            delta=self.delta,
            anchor_rejected=self.anchor_rejected,
            anchor_rejected_image=self.anchor_rejected_image,
            weights=dict(self.loss_weights),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Names people bring from transformers/TRL configs -> ours (for the "did you mean" hint).
ALIASES = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "per_device_train_batch_size": "per_device_batch_size", "batch_size": "global_batch_size",
    "lr_scheduler_type": "lr_scheduler", "warmup": "warmup_ratio", "lora_rank": "lora_r",
    "output": "output_dir", "data": "shards", "loss_type": "loss", "bf16": "dtype", "fp16": "dtype",
}
REQUIRED = ("shards", "output_dir")


def field_help() -> dict[str, str]:
    """Each field's trailing comment in the source above: the CLI help, kept in one place."""
    found = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        match = re.match(r"\s+(\w+): [^#]*#\s*(.+)$", line)
        if match:
            found[match[1]] = match[2]
    return found


def normalize_key(key: Any) -> str:
    return str(key).strip().replace("-", "_")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ------------------------------------------------------------------ type checking, one value
def _field_type(name: str):
    return typing.get_type_hints(TrainConfig)[name]


def _check_value(name: str, value: Any) -> tuple[Any, str | None]:
    """(coerced value, problem or None) for one key, from its annotated type."""
    hint = _field_type(name)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if value is None:
        ok = union and type(None) in typing.get_args(hint)
        return value, None if ok else f"{name}: may not be null"
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if union else hint
    origin = typing.get_origin(base)
    if base is bool:
        return value, None if isinstance(value, bool) else f"{name}: expected true/false, got {value!r}"
    if base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value, None if ok else f"{name}: expected an integer, got {value!r}"
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (float(value) if ok else value), None if ok else f"{name}: expected a number, got {value!r}"
    if base is str:
        ok = isinstance(value, (str, Path))
        return (str(value) if ok else value), None if ok else f"{name}: expected a string, got {value!r}"
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value, None if ok else f"{name}: expected a list of strings, got {value!r}"
    if origin is dict:
        ok = isinstance(value, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
        )
        return (
            ({str(k): float(v) for k, v in value.items()} if ok else value),
            None if ok else f"{name}: expected a mapping of name: number, got {value!r}",
        )
    raise AssertionError(f"unhandled config type {hint} for {name}")


# ------------------------------------------------------------------ loading
def read_yaml(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Options of a YAML config (underscore keys) and the problems found reading it."""
    path = Path(path)
    if not path.is_file():
        return {}, [f"config: {path} does not exist"]
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        return {}, [f"config: {path} is not valid YAML: {error}"]
    if not isinstance(data, dict):
        return {}, [f"config: {path} must be a mapping of key: value, got {type(data).__name__}"]
    data = {normalize_key(k): v for k, v in data.items()}
    data.pop("description", None)  # free text for people
    return data, []


def build_config(options: dict[str, Any], problems: list[str] | None = None) -> TrainConfig:
    """A validated TrainConfig from merged options; raises ConfigError listing every problem."""
    problems = list(problems or [])
    values = {}
    for key, value in options.items():
        name = normalize_key(key)
        if name not in FIELDS:
            close = [ALIASES[name]] if name in ALIASES else difflib.get_close_matches(name, FIELDS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(FIELDS)}"
            problems.append(f"{name}: unknown key; {hint}")
            continue
        value, problem = _check_value(name, value)
        if problem:
            problems.append(problem)
        else:
            values[name] = value
    config = TrainConfig(**values)  # badly typed keys keep their defaults here
    problems += validate(config)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """defaults < YAML at `path` < `overrides` (None values in overrides are ignored)."""
    options, problems = read_yaml(path) if path else ({}, [])
    options.update({normalize_key(k): v for k, v in (overrides or {}).items() if v is not None})
    return build_config(options, problems)


# ------------------------------------------------------------------ validation, all at once
def canonical_dtype(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    dtype = str(dtype).lower().removeprefix("torch.")
    return DTYPE_ALIASES.get(dtype, dtype)


def validate(c: TrainConfig) -> list[str]:
    """Every range/choice problem of a well-typed config (files and data are checked later)."""
    p = []
    p += [f"{flag(name)}: required" for name in REQUIRED if not getattr(c, name)]

    def choice(name, options):
        if getattr(c, name) not in options:
            p.append(f"{flag(name)}: {getattr(c, name)!r} is not one of {', '.join(options)}")

    def positive(*names, allow_zero=False):
        for name in names:
            value = getattr(c, name)
            if value is None:
                continue
            if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
                p.append(f"{flag(name)}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    choice("loss", sorted(LOSSES))
    choice("lr_scheduler", SCHEDULERS)
    choice("finetune", FINETUNE)
    choice("report_to", REPORT_TO)
    if c.dtype is not None and canonical_dtype(c.dtype) not in DTYPES:
        p.append(f"--dtype: {c.dtype!r} is not one of {', '.join(DTYPES)}")
    positive("beta", "lr", "epochs", "global_batch_size", "per_device_batch_size", "lora_r",
             "lora_alpha", "logging_steps", "max_length", "max_steps", "eval_batch_size")
    positive("weight_decay", "max_grad_norm", "save_steps", "save_total_limit", "eval_steps",
             "spot_check_rows", "spot_check_tolerance", "num_workers", "adam_epsilon", allow_zero=True)
    for name in ("warmup_ratio", "lora_dropout", "adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(c, name) < 1.0:
            p.append(f"{flag(name)}: must be in [0, 1), got {getattr(c, name)}")
    if not math.isfinite(c.delta):
        p.append(f"--delta: must be finite, got {c.delta}")
    for term, weight in c.loss_weights.items():
        if term not in TERMS:
            p.append(f"loss_weights: unknown term {term!r}; terms: {', '.join(TERMS)}")
        elif not math.isfinite(weight) or weight < 0:
            p.append(f"loss_weights: weight of {term!r} must be finite and >= 0, got {weight}")
    if c.global_batch_size and c.per_device_batch_size and c.global_batch_size % c.per_device_batch_size:
        p.append(
            f"--global-batch-size {c.global_batch_size} is not a multiple of --per-device-batch-size "
            f"{c.per_device_batch_size} (global = per-device x accumulation x processes)"
        )
    if c.no_image and c.loss in LOSSES:
        from mdpo_train.losses import CHOSEN_REJECTED_IMAGE, required_sequences

        if CHOSEN_REJECTED_IMAGE in required_sequences(c.loss, c.loss_options()):
            p.append(f"--no-image: loss {c.loss!r} reads the rejected image; use dpo (or sft)")
    if c.finetune == "full" and c.lora_target:
        p.append("--lora-target: only applies with --finetune lora")
    if c.merge and c.finetune != "lora":
        p.append("--merge: only applies with --finetune lora (full fine-tuning already saves weights)")
    return p
