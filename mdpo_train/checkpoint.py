"""Checkpoints: RUN/checkpoints/checkpoint-<step>/, written through `accelerate.save_state`.

accelerate saves the optimizer, the scheduler and every process's RNG states (and handles
FSDP/DeepSpeed sharding); the hooks below replace its full-model weights with the trainable
parameters only (a few MB of LoRA instead of the whole base model). `trainer_state.json` holds
the data position and the config. A checkpoint is written under a temp name and renamed, so
a crash mid-save never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

CHECKPOINTS = "checkpoints"
TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")

# Config keys that may change between a run and its resumption (they do not change the math).
RESUMABLE_CHANGES = {
    "resume", "progress", "report_to", "num_workers", "save_steps", "save_total_limit",
    "logging_steps", "eval_steps", "eval_batch_size", "merge", "spot_check_rows",
    "spot_check_tolerance", "output_dir", "shards",
    "data",  # the data identity: checked by mdpo_train.integrity.resume_problems instead
    "prefix_sharing",  # same log-probs either way (tests/scoring/test_packing.py)
    "attention",  # the kernel: same log-probs up to rounding (tests/scoring/test_flex.py)
}


@dataclass
class Position:
    """Where the data stream is: the next step to run is `step_in_epoch` of `epoch`."""

    global_step: int = 0  # optimizer steps completed
    epoch: int = 0
    step_in_epoch: int = 0


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"checkpoint-{step}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name)[1]))


def resolve_resume(resume: str, output_dir: str | Path) -> tuple[Path | None, str | None]:
    """(checkpoint folder, problem): "latest" -> the newest in output_dir; else a folder."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            return None, f"--resume latest: no checkpoint in {Path(output_dir) / CHECKPOINTS}"
        return found[-1], None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        return None, f"--resume: {path} is not a checkpoint folder (no {STATE_FILE})"
    return path, None


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Config keys that differ from the checkpoint's and would change the trajectory."""
    return [
        f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if key not in RESUMABLE_CHANGES and saved.get(key) != current.get(key)
    ]


# ------------------------------------------------------------------ accelerate hooks
def register_hooks(accelerator) -> None:
    """Save/load only the trainable parameters of each prepared model."""

    def save_hook(models, weights, output_dir):
        from safetensors.torch import save_file

        for i, model in enumerate(models):
            inner = accelerator.unwrap_model(model)
            state = {n: p.detach().contiguous().cpu() for n, p in inner.named_parameters() if p.requires_grad}
            if accelerator.is_main_process:
                save_file(state, str(Path(output_dir) / _trainable_name(i)))
        weights.clear()  # accelerate must not write the full model

    def load_hook(models, input_dir):
        from safetensors.torch import load_file

        for i, model in enumerate(models):
            inner = accelerator.unwrap_model(model)
            state = load_file(str(Path(input_dir) / _trainable_name(i)))
            expected = {n for n, p in inner.named_parameters() if p.requires_grad}
            if set(state) != expected:
                raise ValueError(
                    f"{input_dir}: the checkpoint's trainable parameters do not match this model "
                    f"(missing {sorted(expected - set(state))[:3]}, unexpected "
                    f"{sorted(set(state) - expected)[:3]}); was it made with another --finetune/--lora-*?"
                )
            with torch.no_grad():
                params = dict(inner.named_parameters())
                for name, value in state.items():
                    params[name].copy_(value)
        models.clear()  # loaded here; accelerate must not load them again

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _trainable_name(index: int) -> str:
    return TRAINABLE_FILE if index == 0 else f"trainable_{index}.safetensors"


# ------------------------------------------------------------------ save / load
def save(accelerator, output_dir: str | Path, position: Position, config: dict[str, Any], keep: int) -> Path:
    """Write checkpoint-<global_step> atomically (all processes call this); prune to `keep`."""
    final = checkpoint_dir(output_dir, position.global_step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process writes its own RNG state
    accelerator.wait_for_everyone()  # ... before the folder is renamed under them
    if accelerator.is_main_process:
        state = {"position": asdict(position), "config": config}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep] if keep else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_state(path: str | Path) -> tuple[Position, dict[str, Any]]:
    """(position, config) of a checkpoint; ValueError when its state file is damaged."""
    try:
        state = json.loads((Path(path) / STATE_FILE).read_text())
        return Position(**state["position"]), dict(state["config"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{Path(path) / STATE_FILE} is damaged ({error}): resume from another "
                         "checkpoint") from None


def load(accelerator, path: str | Path) -> Position:
    """Restore trainable weights, optimizer, scheduler and RNG; return the data position."""
    accelerator.load_state(str(path))
    return read_state(path)[0]
