"""The MDPO training recipe. Read it top to bottom.

    recipe = MDPORecipe(config)   # cheap: validates config, data folder and run folder, at once
    recipe.setup()                # data, model, spot check, LoRA, optimizer, resume
    recipe.train()                # epochs of optimizer steps; checkpoints; eval
    recipe.save()                 # adapter + processor (+ merged), plot, model card

One trainer for every topology: accelerate decides CPU / one GPU / DDP / FSDP / DeepSpeed from
`accelerate launch` (docs/training.md). The reference model is never loaded: its log-probs come
from the shards, and `verify.spot_check` makes sure they belong to the model being trained.

Per example the policy runs the sequences its loss needs (MDPO: (m_w, y_w), (m_w, y_l),
(m_l, y_w)) as ONE batch; (m_w, y_w) and (m_w, y_l) share one row, so m_w and the question
are encoded once (mdpo_data.scoring.packing; exact, off with prefix_sharing: false). A step is
`global_batch_size` examples, split over processes and micro-batches; each micro-batch loss is
scaled so the gradient is the mean over the step.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from mdpo_data.scoring.logprobs import response_rule_problems
from mdpo_data.scoring.memory import memory_line, peak_memory
from mdpo_train import checkpoint, integrity, output
from mdpo_train.checkpoint import Position
from mdpo_train.config import (
    DTYPES, SPOT_CHECK_TOLERANCE, ConfigError, TrainConfig, canonical_dtype, validate,
)
from mdpo_train.data import Collate, inspect_source, load_splits, local_micro_batches, plan_epoch
from mdpo_train.losses import compute_loss, required_sequences, uses_reference
from mdpo_train.metrics import MetricsLog, Sums, example_metrics, means
from mdpo_train.verify import SpotCheckError, spot_check

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"
CONFIG_FILE = "train_config.yaml"
FINISHED_FILE = "README.md"  # the model card, written last: a run folder without it is unfinished


class NonFiniteLossError(RuntimeError):
    pass


class MDPORecipe:
    def __init__(self, cfg: TrainConfig):
        """Cheap and strict: every problem with the config, the data and the run folder is
        collected and raised together (ConfigError) before any model is loaded."""
        self.cfg = cfg
        problems = validate(cfg)
        self.uses_reference = not problems and uses_reference(cfg.loss, cfg.loss_options())
        scored = self.uses_reference or bool(problems)
        self.source, found = inspect_source(cfg.shards, scored) if cfg.shards else (None, [])
        problems += found
        fp = self.source.fingerprint if self.source else {}
        self.model_id = cfg.model or fp.get("model")
        problems += _model_choice_problems(cfg, fp)
        if self.uses_reference:
            problems += response_rule_problems(fp)
        if self.source and not self.model_id:
            problems.append(f"--model: required, {cfg.shards} is not scored (no reference model to default to)")
        self.dtype = canonical_dtype(cfg.dtype or fp.get("dtype")) or "fp32"
        self.max_length = cfg.max_length or fp.get("max_length")
        if cfg.max_length and fp.get("max_length") and cfg.max_length < fp["max_length"]:
            warnings.warn(f"--max-length {cfg.max_length} is below the scorer's {fp['max_length']}: "
                          "examples with a longer sequence are dropped as they come", stacklevel=2)
        self.resume_from = None
        problems += output.problems(cfg.output_dir, cfg.shards)
        if cfg.output_dir and cfg.resume:
            self.resume_from, problem = checkpoint.resolve_resume(cfg.resume, cfg.output_dir)
            problems += [problem] if problem else []
            damaged = checkpoint.verify_checkpoint(self.resume_from) if self.resume_from else []
            problems += [f"--resume: {p}" for p in damaged]
            if damaged:  # nothing of it is read further
                self.resume_from = None
            try:
                _, saved = checkpoint.read_state(self.resume_from) if self.resume_from else (None, None)
            except ValueError as error:
                problems.append(f"--resume: {error}")
                self.resume_from = saved = None
            if saved is not None:
                changed = checkpoint.config_changes(saved, cfg.to_dict())
                problems += [f"--resume: config differs from the checkpoint's: {c}" for c in changed]
                problems += integrity.resume_problems(saved, self.source)
        elif cfg.output_dir and checkpoint.list_checkpoints(cfg.output_dir):
            problems.append(f"--output-dir {cfg.output_dir} already holds checkpoints: pass "
                            "--resume latest to continue that run, or choose another folder")
        elif cfg.output_dir and (Path(cfg.output_dir) / FINISHED_FILE).exists():
            problems.append(f"--output-dir {cfg.output_dir} already holds a finished run: choose "
                            "another folder or delete it")
        problems += _tracker_problems(cfg.report_to)
        if problems:
            raise ConfigError(problems)

        from accelerate import Accelerator

        self.accelerator = Accelerator(
            mixed_precision="fp16" if self.dtype == "fp16" else "no",  # fp16 needs loss scaling
            log_with=None if cfg.report_to == "none" else cfg.report_to,
            project_dir=cfg.output_dir,
            step_scheduler_with_optimizer=False,  # we step it once per optimizer step ourselves
        )
        world = self.accelerator.num_processes
        if cfg.global_batch_size % (cfg.per_device_batch_size * world):
            raise ConfigError([
                f"--global-batch-size {cfg.global_batch_size} is not a multiple of "
                f"--per-device-batch-size {cfg.per_device_batch_size} x {world} processes"
            ])
        self.accumulation = cfg.global_batch_size // (cfg.per_device_batch_size * world)
        self.loss_options = cfg.loss_options()
        self.sequences = required_sequences(cfg.loss, self.loss_options)
        self.output_dir = Path(cfg.output_dir)
        self.position = Position()
        self.last_eval_step: int | None = None
        self.too_long = 0  # train examples dropped for exceeding max_length (counted per epoch)
        self.last_record: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate.utils import set_seed

        from mdpo_data.scoring.models import load_model
        from mdpo_data.demo.tiny import is_smoke_test_model
        from mdpo_train.model import count_parameters, make_policy, trainable_parameters
        from mdpo_train.optim import make_optimizer, make_scheduler

        cfg, acc = self.cfg, self.accelerator
        # 1. Seed every RNG: LoRA's initial weights and dropout depend on it.
        set_seed(cfg.seed)
        # 2. Data: every shard's sha256 and row count checked against the manifest first; then
        #    rows with null/non-finite reference log-probs dropped (a counted warning).
        self.data_check = integrity.verify(self.source)
        self.splits = load_splits(self.source, self.sequences if self.uses_reference else (),
                                  cfg.no_image)
        self.train_data = self.splits["train"]
        # 3. The scoring model, loaded exactly as the scorer loaded it.
        model, self.processor = load_model(
            self.model_id, dtype=DTYPES[self.dtype], device=str(acc.device),
            trust_remote_code=cfg.trust_remote_code, revision=cfg.revision, attention=cfg.attention,
        )
        self.smoke_test = is_smoke_test_model(model)
        # 4. Before training, policy == reference: recompute a few stored log-probs.
        with integrity.stored_data_errors("the spot-check rows"):
            self.spot_check = self._spot_check(model)
        # 4b. y_w and y_l under m_w as one row (block mask), where the model takes it and it
        #     gives the separate sequences' log-probs on a few rows.
        with integrity.stored_data_errors("the prefix-sharing check rows"):
            self.prefix_sharing, self.sharing_note = self._prefix_sharing(model)
        self.collate = integrity.GuardedCollate(Collate(
            self.processor, self.sequences, self.max_length, share=self.prefix_sharing, no_image=cfg.no_image))
        # 5. The policy: LoRA on (or all of) the language model; vision tower/projector frozen.
        model = make_policy(model, cfg)
        self.trainable, self.total_params = count_parameters(model)
        # 6. Optimizer and lr schedule over the optimizer steps of the whole run.
        self.steps_per_epoch = len(self._plan(0))
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        optimizer = make_optimizer(trainable_parameters(model), cfg)
        scheduler = make_scheduler(optimizer, self.total_steps, cfg)
        self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        self.params = list(trainable_parameters(acc.unwrap_model(self.model)).values())
        checkpoint.register_hooks(acc)
        # 7. Resume: trainable weights, optimizer, scheduler, every RNG, and the data position.
        if self.resume_from:
            self.position = checkpoint.load(acc, self.resume_from, self.steps_per_epoch)
        # 8. Logs: metrics.jsonl (cut back to the checkpoint on resume) and trackers, in the
        #    run folder, marked ours first.
        if acc.is_main_process:
            output.claim(self.output_dir)
        self.log = MetricsLog(self.output_dir / METRICS_FILE, enabled=acc.is_main_process,
                              resume_step=self.position.global_step if self.resume_from else None)
        if acc.is_main_process:
            output.write_text(self.output_dir, CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        acc.init_trackers("mdpo-train", config=_flat(cfg.to_dict()))
        self._describe()

    def _prefix_sharing(self, model) -> tuple[bool, str]:
        from mdpo_train.model import prefix_sharing_support, sharing_difference

        if not self.cfg.prefix_sharing:
            return False, "prefix_sharing: false"
        supported, why = prefix_sharing_support(model)
        rows = self.train_data.take(range(min(2, len(self.train_data))))
        if not supported or not rows:
            return supported, why
        diff = sharing_difference(model, self.processor, rows, self.sequences, self.cfg.no_image)
        atol = SPOT_CHECK_TOLERANCE[self.dtype][0]
        if not diff <= atol:  # e.g. a model whose own mask is not plain causal (NaN: not either)
            return False, f"{why}, but it moved log-probs by {diff:.3g} (> {atol}) on {len(rows)} rows"
        return True, f"{why}; equal to separate sequences on {len(rows)} rows (max diff {diff:.1e})"

    def _spot_check(self, model) -> dict[str, Any] | None:
        n = min(self.cfg.spot_check_rows, len(self.train_data))
        if not n or not self.source.fingerprint:  # unscored data (sft): nothing to check
            return None
        atol, rtol = SPOT_CHECK_TOLERANCE[self.dtype]
        if self.cfg.spot_check_tolerance is not None:
            atol, rtol = self.cfg.spot_check_tolerance, 0.0
        try:
            # At the scorer's max length: the stored values were computed there; a smaller
            # --max-length only drops examples from training (counted), it is not a mismatch.
            return spot_check(model, self.processor, self.train_data.take(range(n)),
                              self.source.fingerprint, dtype=self.dtype,
                              max_length=self.source.fingerprint.get("max_length") or self.max_length,
                              atol=atol, rtol=rtol)
        except SpotCheckError as error:
            if not self.cfg.force_model:
                raise
            warnings.warn(f"--force-model: training anyway; {error}", stacklevel=2)
            return None

    def _describe(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        acc.print(
            f"mdpo-train: {len(self.train_data)} train examples, loss {cfg.loss} "
            f"({len(self.sequences)} sequences per example), {self.steps_per_epoch} steps/epoch, "
            f"{self.total_steps} steps; batch {cfg.per_device_batch_size} x {self.accumulation} "
            f"accumulation x {acc.num_processes} processes = {cfg.global_batch_size}; trainable "
            f"{self.trainable:,} of {self.total_params:,} parameters "
            f"({100 * self.trainable / self.total_params:.2f}%); {self.dtype} on {acc.device}"
        )
        state = "on" if self.prefix_sharing else "off, separate sequences"
        acc.print(f"mdpo-train: prefix sharing {state}: {self.sharing_note}")

    # ------------------------------------------------------------------ data
    def _plan(self, epoch: int) -> list[list[int]]:
        return plan_epoch(len(self.train_data), self.cfg.seed, epoch, self.cfg.global_batch_size,
                          self.accelerator.num_processes)

    def _loader(self, data, micro_batches: list[list[int]]):
        # Its own generator: starting a DataLoader iterator otherwise draws from the global
        # torch RNG, and a resumed run (new iterator mid-epoch) would get other dropout masks.
        return torch.utils.data.DataLoader(
            data, batch_sampler=micro_batches, collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def _steps(self, epoch: int, start: int):
        """For steps start.. of `epoch`: (examples in the step, this process's micro-batch
        count, an iterator over them). Micro-batches are encoded lazily, one at a time."""
        acc, per_device = self.accelerator, self.cfg.per_device_batch_size
        plan = self._plan(epoch)[start:]
        rank, world = acc.process_index, acc.num_processes
        mine = [local_micro_batches(step, rank, world, per_device) for step in plan]
        batches = iter(self._loader(self.train_data, [mb for step in mine for mb in step]))
        for step, micro in zip(plan, mine):
            yield len(step), len(micro), itertools.islice(batches, len(micro))

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        cfg, acc, pos = self.cfg, self.accelerator, self.position
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=pos.global_step, unit="step", dynamic_ncols=True,
                   disable=not (cfg.progress and acc.is_main_process))
        self.model.train()
        while pos.global_step < self.total_steps:
            for step_examples, n_micro, micro in self._steps(pos.epoch, pos.step_in_epoch):
                start, lr = time.perf_counter(), self.scheduler.get_last_lr()[0]
                try:
                    metrics = self._train_step(step_examples, n_micro, micro)
                except NonFiniteLossError as error:
                    path = self.save_checkpoint()  # the state after the last good step
                    raise NonFiniteLossError(
                        f"{error}\nStopped at step {pos.global_step + 1}; the last good state is "
                        f"{path}. Lower --lr, check the data's reference log-probs, or avoid fp16."
                    ) from None
                # Advance the data position first, so a checkpoint names the NEXT step to run.
                pos.global_step += 1
                pos.step_in_epoch += 1
                epoch_end = pos.step_in_epoch == self.steps_per_epoch
                if epoch_end:
                    pos.epoch, pos.step_in_epoch = pos.epoch + 1, 0
                self._log({"step": pos.global_step, "split": "train", "lr": lr,
                           "epoch": pos.global_step / self.steps_per_epoch,
                           "seconds": time.perf_counter() - start, **metrics}, every=cfg.logging_steps)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics.get('loss', math.nan):.4f}",
                                acc=f"{metrics.get('accuracy/dpo', math.nan):.2f}")
                every = cfg.eval_steps and pos.global_step % cfg.eval_steps == 0
                if every or (epoch_end and not cfg.eval_steps):
                    self.evaluate()
                if cfg.save_steps and pos.global_step % cfg.save_steps == 0:
                    self.save_checkpoint()
                if epoch_end or pos.global_step >= self.total_steps:
                    break  # a new epoch needs a new order
        bar.close()
        self.memory = peak_memory(acc.device)  # the micro-batch planning line (and the model card)
        acc.print(f"mdpo-train: {memory_line(cfg.per_device_batch_size, self.memory, 'examples')}")
        if self.last_eval_step != pos.global_step:
            self.evaluate()
        if self.too_long:
            warnings.warn(f"{self.too_long} train examples (counted each time seen) were skipped: a "
                          f"sequence is longer than --max-length {self.max_length}", stacklevel=2)

    def _train_step(self, step_examples: int, n_micro: int, micro) -> dict[str, float]:
        """One optimizer step over this process's micro-batches; metrics averaged over all."""
        cfg, acc, model = self.cfg, self.accelerator, self.model
        sums, example_ids = Sums(), []
        for i, batch in enumerate(micro):
            example_ids += batch.example_ids
            self.too_long += batch.too_long
            if not len(batch):  # every example too long for a --max-length below the scorer's
                continue
            sync = i == n_micro - 1  # DDP all-reduces gradients only on the last micro-batch
            with contextlib.nullcontext() if sync else acc.no_sync(model):
                out, policy = self._forward(batch)
                # Mean over the step's examples: DDP averages over processes, so scale by them.
                acc.backward(out.losses.sum() * acc.num_processes / step_examples)
            sums.add(example_metrics(out, policy))
        names, local = sums.vector()
        metrics = means(names, acc.reduce(local, "sum").tolist())  # the step's one sync point
        kept = metrics["examples"]
        if not kept:  # every example of the step too long: no update, no lr step (counted)
            self.position.empty_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            return metrics
        if kept != step_examples:  # the mean over the examples kept, not the ones planned
            for param in self.params:
                if param.grad is not None:
                    param.grad.mul_(step_examples / kept)
        if cfg.max_grad_norm:
            metrics["grad_norm"] = float(acc.clip_grad_norm_(self.params, cfg.max_grad_norm))
        bad = {k: v for k, v in metrics.items() if k.startswith("loss") or k == "grad_norm"}
        if not all(math.isfinite(v) for v in bad.values()):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                "non-finite training loss: " + ", ".join(f"{k}={v:.4g}" for k, v in bad.items())
                + f"; examples on this process: {example_ids[:8]}"
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return metrics

    def _forward(self, batch):
        """Policy log-probs of the batch's sequences in one forward (packed rows), then the loss."""
        from mdpo_data.scoring.logprobs import packed_logps

        logps, counts = packed_logps(self.model, batch.inputs)
        policy = dict(zip(batch.sequences, logps.view(len(batch.sequences), -1)))
        tokens = dict(zip(batch.sequences, counts.view(len(batch.sequences), -1)))
        reference = {name: ref.to(logps.device) for name, ref in batch.reference.items()}
        return compute_loss(self.cfg.loss, policy, reference, self.loss_options, tokens), policy

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Mean metrics over the eval split (each process takes every world-th example)."""
        acc, data = self.accelerator, self.splits.get("eval")
        if data is None or len(data) < acc.num_processes:
            return None
        mine = list(range(len(data)))[acc.process_index :: acc.num_processes]
        size = self.cfg.eval_batch_size or self.cfg.per_device_batch_size
        sums = Sums()
        self.model.eval()
        for batch in self._loader(data, [mine[i : i + size] for i in range(0, len(mine), size)]):
            if not len(batch):
                continue
            out, policy = self._forward(batch)
            sums.add(example_metrics(out, policy))
        self.model.train()
        names, local = sums.vector()
        metrics = means(names, acc.reduce(local, "sum").tolist())
        self._log({"step": self.position.global_step, "split": "eval", **metrics}, every=1)
        self.last_eval_step = self.position.global_step
        return metrics

    # ------------------------------------------------------------------ outputs
    def _log(self, record: dict[str, Any], every: int) -> None:
        step = record["step"]
        if step % every and step != self.total_steps:
            return
        self.log.write(record)
        prefix = "" if record["split"] == "train" else "eval/"
        values = {prefix + k: v for k, v in record.items() if k not in ("split", "step")}
        self.accelerator.log(values, step=step)
        self.last_record[record["split"]] = record

    def save_checkpoint(self) -> Path:
        """checkpoint-<step>: trainable weights, optimizer, scheduler, RNG, data position."""
        path = checkpoint.checkpoint_dir(self.output_dir, self.position.global_step)
        if (path / checkpoint.STATE_FILE).is_file():
            return path
        config = {**self.cfg.to_dict(), integrity.DATA_KEY: integrity.identity(self.source)}
        return checkpoint.save(self.accelerator, self.output_dir, self.position, config,
                               keep=self.cfg.save_total_limit)

    def save(self) -> Path:
        """The adapter (peft file names) or full weights, the processor, optionally merged weights,
        the curves and the model card, in the run folder."""
        from mdpo_train.model_card import write_model_card
        from mdpo_train.plot import plot_metrics

        acc = self.accelerator
        acc.wait_for_everyone()
        model = acc.unwrap_model(self.model)
        state = acc.get_state_dict(self.model)
        if acc.is_main_process:
            model.save_pretrained(self.output_dir, state_dict=state)
            output.stable_adapter_config(self.output_dir)
            self.processor.save_pretrained(self.output_dir)
            if self.cfg.merge:
                merged_dir = self.output_dir / "merged"
                model.merge_and_unload().save_pretrained(merged_dir)
                self.processor.save_pretrained(merged_dir)
            plot_metrics(self.output_dir / METRICS_FILE, self.output_dir / PLOT_FILE)
            write_model_card(self.output_dir, self.summary())
            for folder in (self.output_dir, *([self.output_dir / "merged"] if self.cfg.merge else [])):
                output.list_weights(folder)  # last: what `mdpo-eval --adapter` checks before loading
                output.share(folder)
        acc.wait_for_everyone()
        acc.end_training()
        return self.output_dir

    def summary(self) -> dict[str, Any]:
        """What the model card reports."""
        return {
            "config": self.cfg.to_dict(),
            "model": self.model_id,
            "dtype": self.dtype,
            "max_length": self.max_length,
            "manifest": self.source.manifest,
            "train_examples": len(self.train_data),
            "eval_examples": len(self.splits.get("eval") or []),
            "steps": self.position.global_step,
            "optimizer_steps": self.position.optimizer_steps,
            "too_long": self.too_long,
            "steps_per_epoch": self.steps_per_epoch,
            "accumulation": self.accumulation,
            "processes": self.accelerator.num_processes,
            "trainable_parameters": self.trainable,
            "total_parameters": self.total_params,
            "spot_check": self.spot_check,
            "prefix_sharing": self.prefix_sharing,
            "smoke_test": self.smoke_test,
            "last": self.last_record,
            "memory": getattr(self, "memory", None),
        }


def run(cfg: TrainConfig) -> MDPORecipe:
    recipe = MDPORecipe(cfg)
    recipe.setup()
    recipe.train()
    recipe.save()
    return recipe


# ------------------------------------------------------------------ helpers
def _model_choice_problems(cfg: TrainConfig, fingerprint: dict[str, Any]) -> list[str]:
    scored_by = fingerprint.get("model")
    if not cfg.model or not scored_by or cfg.force_model or _same_model(cfg.model, scored_by):
        return []
    return [f"--model {cfg.model!r} is not the model that scored the reference log-probs "
            f"({scored_by!r}): against another model they are meaningless. Omit --model to train "
            f"{scored_by!r}, rescore the data with your model, or pass --force-model."]


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _tracker_problems(report_to: str) -> list[str]:
    import importlib.util

    if report_to in ("tensorboard", "wandb") and importlib.util.find_spec(report_to) is None:
        return [f"--report-to {report_to}: not installed; pip install {report_to}"]
    return []


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """Tracker hyperparameters must be scalars."""
    scalar = (int, float, str, bool, type(None))
    return {k: v if isinstance(v, scalar) else str(v) for k, v in config.items()}
