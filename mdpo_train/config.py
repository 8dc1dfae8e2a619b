"""The training config: one flat dataclass, loaded from YAML and overridden by CLI flags.

Each field is a YAML key and an `mdpo-train` flag, its help text in the field's metadata
(`mdpo_data.config.options`, shared with `mdpo-data build`). Precedence: defaults < `--config` YAML
< flags. Keys may use dashes or underscores. Unknown keys (with the closest known one), wrong
types and out-of-range values are all collected and reported together, before anything heavy
is imported or loaded. Defaults follow the MDPO paper and its released config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdpo_data.config import options as config_io
from mdpo_data.config.options import names_from, setting
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
    shards: str | None = setting(None, "scored build folder (Arrow shards) or Hub export (data/*.parquet)")
    output_dir: str | None = setting(None, "run folder: checkpoints, metrics, adapter, card")
    resume: str | None = setting(None, '"latest" (newest checkpoint in output_dir) or a checkpoint folder')
    # ---- model
    model: str | None = setting(None, "default: the model that scored the reference log-probs")
    force_model: bool = setting(False, "train another model on these reference log-probs anyway")
    revision: str | None = setting(None, "Hub revision of the model")
    trust_remote_code: bool = setting(False, "run the model repository's own code")
    dtype: str | None = setting(None, "bf16|fp16|fp32; default: the dtype the reference was scored in")
    max_length: int | None = setting(None, "longer examples are dropped, never truncated; default: the "
                                     "scorer's", above=0)
    finetune: str = setting("lora", "lora: adapters on the language model; full: all of the language model", choices=FINETUNE)
    lora_r: int = setting(64, "LoRA rank (paper: 64)", above=0)
    lora_alpha: int = setting(128, "LoRA alpha (paper: 128)", above=0)
    lora_dropout: float = setting(0.05, "LoRA dropout", min=0, below=1)
    lora_target: list[str] | None = setting(None, "e.g. q_proj,v_proj; default: every linear layer of the LM")
    gradient_checkpointing: bool = setting(False, "~30% slower, far less activation memory")
    attention: str = setting("auto", "attention kernel: auto | sdpa | eager | flex_attention (packed rows "
                             "as a BlockMask)", choices=names_from("mdpo_data.scoring.models", "ATTENTION"))
    prefix_sharing: bool = setting(True, "y_w and y_l under one image as one sequence (block mask; exact)")
    # ---- loss (docs/method.md)
    loss: str = setting("mdpo", "mdpo | dpo | mdpo_no_cond | mdpo_no_anchor | sft (needs no reference "
                        "scores)", choices=lambda: tuple(sorted(LOSSES)))
    beta: float = setting(0.1, "reward scale, r = beta (log pi - log pi_ref) (paper: 0.1)", above=0)
    delta: float = setting(0.0, "anchor value (paper: 0)")
    anchor_rejected: bool = setting(False, "extra term: reward of the rejected response below delta")
    anchor_rejected_image: bool = setting(False, "extra term: reward of y_w under the rejected image below "
                                          "delta")
    loss_weights: dict[str, float] = setting(help="per term, e.g. conditional=0.5 (default 1); >0 adds it",
                                             factory=dict, flag="--loss-weight")
    no_image: bool = setting(False, '"DPO (No Image)": text only, against the stored no-image reference '
                             "log-probs")
    # ---- optimization (paper + released config)
    epochs: int = setting(3, "passes over the train split (paper: 3)", above=0)
    max_steps: int | None = setting(None, "stop after this many optimizer steps (the schedule ends there)", above=0)
    global_batch_size: int = setting(32, "= per-device batch x grad accumulation x processes (paper: 32)", above=0)
    per_device_batch_size: int = setting(4, "examples per forward; each is 3 sequences for MDPO", above=0)
    lr: float = setting(1e-5, "peak learning rate (paper: 1e-5)", above=0)
    lr_scheduler: str = setting("cosine", "cosine | linear | constant, after linear warmup", choices=SCHEDULERS)
    warmup_ratio: float = setting(0.1, "fraction of the steps spent warming up (paper: 0.1)", min=0, below=1)
    weight_decay: float = setting(0.05, "AdamW weight decay on matrices (released config: 0.05)", min=0)
    adam_beta1: float = setting(0.9, "AdamW beta1", min=0, below=1)
    adam_beta2: float = setting(0.98, "AdamW beta2 (released config: 0.98)", min=0, below=1)
    adam_epsilon: float = setting(1e-8, "AdamW epsilon", min=0)
    max_grad_norm: float = setting(1.0, "gradient clipping norm; 0 disables clipping", min=0)
    seed: int = setting(42, "data order, LoRA init and dropout")
    # ---- loop, logging, outputs
    save_steps: int = setting(500, "checkpoint every N optimizer steps; 0: no checkpoints", min=0)
    save_total_limit: int = setting(2, "keep the newest N checkpoints; 0 keeps all", min=0)
    eval_steps: int = setting(0, "evaluate every N steps; 0: at the end of each epoch (if an eval split)", min=0)
    eval_batch_size: int | None = setting(None, "default: per-device batch size", above=0)
    logging_steps: int = setting(1, "write metrics every N steps", above=0)
    report_to: str = setting("none", "none | tensorboard | wandb (through accelerate's trackers)", choices=REPORT_TO)
    spot_check_rows: int = setting(4, "rows whose stored reference log-probs are recomputed at start; "
                                   "0 skips", min=0)
    spot_check_tolerance: float | None = setting(None, "absolute tolerance; default by dtype "
                                                 "(SPOT_CHECK_TOLERANCE)", min=0)
    num_workers: int = setting(0, "DataLoader worker processes decoding and encoding batches", min=0)
    merge: bool = setting(False, "also write the LoRA merged into the base weights (RUN/merged)")
    progress: bool = setting(True, "tqdm progress bar on the main process")

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


FIELDS = config_io.fields(TrainConfig)
# Names people bring from transformers/TRL configs -> ours (for the "did you mean" hint).
ALIASES = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "per_device_train_batch_size": "per_device_batch_size", "batch_size": "global_batch_size",
    "lr_scheduler_type": "lr_scheduler", "warmup": "warmup_ratio", "lora_rank": "lora_r",
    "output": "output_dir", "data": "shards", "loss_type": "loss", "bf16": "dtype", "fp16": "dtype",
}
REQUIRED = ("shards", "output_dir")

normalize_key = config_io.normalize_key
flag = config_io.flag


def field_help() -> dict[str, str]:
    """Each field's help text (the flag's help), from its metadata."""
    return {name: config_io.help_of(f) for name, f in FIELDS.items()}


# ------------------------------------------------------------------ loading
def read_yaml(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Options of a YAML config (underscore keys) and the problems found reading it."""
    try:
        return config_io.read_yaml(path, "config"), []
    except config_io.ConfigFileError as error:
        return {}, [f"config: {error}"]


def build_config(options: dict[str, Any], problems: list[str] | None = None) -> TrainConfig:
    """A validated TrainConfig from merged options; raises ConfigError listing every problem."""
    problems = list(problems or [])
    options = {normalize_key(k): v for k, v in options.items()}
    for name, close in config_io.unknown_keys(options, FIELDS, ALIASES).items():
        hint = f"did you mean {close!r}?" if close else f"valid keys: {', '.join(FIELDS)}"
        problems.append(f"{name}: unknown key; {hint}")
    values, type_problems = config_io.check_fields(TrainConfig, options)
    config = TrainConfig(**values)  # badly typed keys keep their defaults here
    problems += type_problems + validate(config)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """defaults < (on --resume) the checkpoint's config < YAML at `path` < `overrides` (None
    values in overrides are ignored). So `--resume latest` alone continues the run as it was
    configured; a key given again with another value is still refused by the recipe."""
    options, problems = read_yaml(path) if path else ({}, [])
    options.update({normalize_key(k): v for k, v in (overrides or {}).items() if v is not None})
    return build_config({**resumed_options(options), **options}, problems)


def resumed_options(options: dict[str, Any]) -> dict[str, Any]:
    """The config saved in the checkpoint that `resume` names ({} when there is none or it
    cannot be read: the recipe reports that with the other problems)."""
    if not options.get("resume") or not options.get("output_dir"):
        return {}
    from mdpo_train.checkpoint import read_state, resolve_resume

    found, _ = resolve_resume(str(options["resume"]), str(options["output_dir"]))
    try:
        saved = read_state(found)[1] if found else {}
    except ValueError:
        return {}
    return {k: v for k, v in saved.items() if k in FIELDS and k not in ("resume", "output_dir")}


# ------------------------------------------------------------------ validation, all at once
def canonical_dtype(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    dtype = str(dtype).lower().removeprefix("torch.")
    return DTYPE_ALIASES.get(dtype, dtype)


def validate(c: TrainConfig) -> list[str]:
    """Problems no field's type, choices or bounds can say (those are checked with the types,
    from each field's `setting` metadata); files and data are checked later."""
    p = []
    p += [f"{flag(name)}: required" for name in REQUIRED if not getattr(c, name)]

    if c.dtype is not None and canonical_dtype(c.dtype) not in DTYPES:
        p.append(f"--dtype: {c.dtype!r} is not one of {', '.join(DTYPES)}")
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
