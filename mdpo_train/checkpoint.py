"""Checkpoints: RUN/checkpoints/checkpoint-<step>/, written through `accelerate.save_state`.

accelerate saves the optimizer, the scheduler and every process's RNG states (and handles
FSDP/DeepSpeed sharding); the hooks below replace its full-model weights with the trainable
parameters only (a few MB of LoRA instead of the whole base model). `trainer_state.json` holds
the data position and the config. A checkpoint is written under a temp name and renamed, so
a crash mid-save never leaves a folder that looks complete.

Integrity: `checksums.json`, written LAST, lists every file's sha256 and the global step.
A resume first verifies it (`verify_checkpoint`): a missing, extra or changed file (an RNG
state deleted, a flipped byte in the optimizer state) and a global step that disagrees with
the folder name, the trainer state or the scheduler's own step count are one line each, so
nothing damaged is ever loaded, and nothing is fed to torch.load before its hash matched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mdpo_data.format.integrity import file_hashes, listing_problems
from mdpo_data.format.shards import umask_mode
from mdpo_train.data import DataError

CHECKPOINTS = "checkpoints"
TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "trainer_state.json"
CHECKSUMS_FILE = "checksums.json"
SCHEDULER_FILE = "scheduler.bin"  # accelerate's name for the first scheduler's state
RNG_FILE = "random_states_{}.pkl"  # accelerate's name for process i's RNG states
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


class CheckpointError(DataError):
    """A checkpoint cannot be saved or resumed from; one line naming the file."""


@dataclass
class Position:
    """Where the data stream is: the next step to run is `step_in_epoch` of `epoch`."""

    global_step: int = 0  # steps completed (the data position)
    epoch: int = 0
    step_in_epoch: int = 0
    empty_steps: int = 0  # steps whose examples were all too long: no optimizer/scheduler step

    @property
    def optimizer_steps(self) -> int:
        return self.global_step - self.empty_steps


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"checkpoint-{step}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders, oldest first (a folder gets its name only once complete, by rename;
    a damaged one is listed too, so `latest` refuses it rather than silently taking an older)."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name)[1]))


def resolve_resume(resume: str, output_dir: str | Path) -> tuple[Path | None, str | None]:
    """(checkpoint folder, problem): "latest" -> the newest in output_dir; else a folder."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            return None, f"--resume latest: no checkpoint in {Path(output_dir) / CHECKPOINTS}"
        return found[-1], None
    path = Path(resume)
    if not path.is_dir() or not any((path / name).is_file() for name in (STATE_FILE, CHECKSUMS_FILE)):
        return None, f"--resume: {path} is not a checkpoint folder (no {CHECKSUMS_FILE})"
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
            import torch

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
    """Write checkpoint-<global_step> atomically (all processes call this); prune to `keep`.
    A write that fails (a full disk) is one CheckpointError; no partial folder is left."""
    final = checkpoint_dir(output_dir, position.global_step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))  # every process writes its own RNG state
    except Exception as error:  # noqa: BLE001 - torch.save/safetensors wrap the OS error
        if not is_write_failure(error):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {one_line(error)}") from None
    accelerator.wait_for_everyone()  # ... before the folder is renamed under them
    if accelerator.is_main_process:
        try:
            state = {"position": asdict(position), "config": config}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
            for written in tmp.iterdir():  # safetensors writes 0600: a shared run stays readable
                if written.is_file() and not written.is_symlink():
                    os.chmod(written, umask_mode())
            write_checksums(tmp, position.global_step)  # last: its presence means complete
        except OSError as error:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"cannot write checkpoint {final}: {one_line(error)}") from None
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep] if keep else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def is_write_failure(error: BaseException) -> bool:
    """A failed write (full disk, file too large), as OSError or as torch.save's and
    safetensors' own errors around it."""
    text = str(error)
    return isinstance(error, OSError) or (
        type(error).__name__ == "SafetensorError" and ("I/O error" in text or "IoError" in text)
    ) or (isinstance(error, RuntimeError) and ("failed writing" in text or "file write failed" in text))


def one_line(error: BaseException) -> str:
    """An OSError/RuntimeError of a failed write as one short line (torch and safetensors
    put the OS error inside their own multi-line messages)."""
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror}{where}"
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:240]}"


# ------------------------------------------------------------------ integrity
def _listed(name: str) -> bool:
    return name != CHECKSUMS_FILE


def write_checksums(folder: Path, global_step: int) -> None:
    files = file_hashes(folder, _listed)
    text = json.dumps({"global_step": global_step, "files": files}, indent=2, sort_keys=True)
    (folder / CHECKSUMS_FILE).write_text(text + "\n")


def verify_checkpoint(path: str | Path) -> list[str]:
    """Problems (one line each) that make the checkpoint unusable; [] when it is intact.

    Order matters: every file's hash before anything is parsed, then the global step's
    agreement between the folder name, checksums.json, trainer_state.json and the
    scheduler state (edited together or not, they must agree)."""
    path = Path(path)
    hint = "resume from another checkpoint (--resume PATH) or start a new run"
    try:
        listed = json.loads((path / CHECKSUMS_FILE).read_text())
        files, step = dict(listed["files"]), int(listed["global_step"])
    except FileNotFoundError:
        return [f"{path}: no {CHECKSUMS_FILE} (it is written last): the checkpoint is incomplete "
                f"or from an older mdpo-train; {hint}"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        return [f"{path / CHECKSUMS_FILE} is damaged ({one_line(error)}); {hint}"]
    problems = listing_problems(path, files, CHECKSUMS_FILE, _listed, f"; {hint}")
    for required in (STATE_FILE, TRAINABLE_FILE, SCHEDULER_FILE, RNG_FILE.format(0)):
        if required not in files:
            problems.append(f"{path}: {required} is not in {CHECKSUMS_FILE}; {hint}")
    return problems[:1] or _step_problems(path, step, hint)  # the first problem says enough


def _step_problems(path: Path, step: int, hint: str) -> list[str]:
    """The global step as the folder name, checksums.json, trainer_state.json and the
    scheduler's step count (which counts optimizer steps) record it."""
    import torch

    try:
        position, _ = read_state(path)
        scheduler = torch.load(path / SCHEDULER_FILE, map_location="cpu", weights_only=True)
        scheduled = int(scheduler["last_epoch"])
    except ValueError as error:
        return [str(error)]
    except Exception as error:  # noqa: BLE001 - hashed bytes that are still not a state
        return [f"{path / SCHEDULER_FILE}: not a scheduler state ({one_line(error)}); {hint}"]
    named = _NAME.match(path.name)
    claims = {f"{CHECKSUMS_FILE}": step, f"{STATE_FILE}": position.global_step}
    if named:
        claims["the folder name"] = int(named[1])
    if len(set(claims.values())) > 1 or scheduled != position.optimizer_steps:
        said = ", ".join(f"{k} {v}" for k, v in claims.items())
        return [f"{path}: the global step disagrees ({said}, the scheduler ran {scheduled} optimizer "
                f"steps, the trainer state {position.optimizer_steps}): the checkpoint was edited; "
                f"{hint}"]
    return []


def read_state(path: str | Path) -> tuple[Position, dict[str, Any]]:
    """(position, config) of a checkpoint; ValueError when its state file is damaged."""
    try:
        state = json.loads((Path(path) / STATE_FILE).read_text())
        position = Position(**state["position"])
        values = asdict(position).values()
        if not all(type(v) is int and v >= 0 for v in values) or position.optimizer_steps < 0:
            raise ValueError(f"position {state['position']} is not counts")
        return position, dict(state["config"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise ValueError(f"{Path(path) / STATE_FILE} is damaged ({error}): resume from another "
                         "checkpoint") from None


def load(accelerator, path: str | Path, steps_per_epoch: int) -> Position:
    """Restore trainable weights, optimizer, scheduler and RNG; return the data position.
    Run only after `verify_checkpoint` passed; what still fails to load is one CheckpointError,
    as does a data position this run's epochs cannot hold (an edited trainer state)."""
    path = Path(path)
    position = read_state(path)[0]
    expected = position.epoch * steps_per_epoch + position.step_in_epoch
    if position.step_in_epoch >= steps_per_epoch or position.global_step != expected:
        raise CheckpointError(
            f"{path / STATE_FILE}: the data position (epoch {position.epoch}, step "
            f"{position.step_in_epoch} of {steps_per_epoch}) does not give its global step "
            f"{position.global_step}: the trainer state was edited; resume from another checkpoint")
    rng = RNG_FILE.format(accelerator.process_index)
    if not (path / rng).is_file():
        raise CheckpointError(f"{path}: no {rng}: the checkpoint was saved by fewer processes than "
                              f"this run's {accelerator.num_processes}; resume with the same number")
    try:
        accelerator.load_state(str(path))
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - e.g. another LoRA shape: one line, not a traceback
        raise CheckpointError(f"{path}: cannot be loaded into this run ({one_line(error)})") from None
    return position
