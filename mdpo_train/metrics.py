"""What the trainer reports: per-example metrics, their sums across a step, the JSONL log.

Every metric is a mean over examples. Per micro-batch the per-example values are summed into
one vector, so a whole step needs ONE cross-process reduction and ONE device-to-host copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mdpo_train.losses import CHOSEN, CHOSEN_REJECTED_IMAGE, REJECTED, LossOutput
from mdpo_train.output import open_log

COUNT = "count"


def example_metrics(out: LossOutput, policy: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-example [B] values: loss and each term; rewards of chosen, rejected and
    chosen-with-rejected-image; margins and accuracies of both contrasts; policy log-probs."""
    r = out.rewards
    values = {"loss": out.losses.detach()}
    values.update({f"loss/{name}": term for name, term in out.terms.items()})
    values.update({f"rewards/{name}": reward for name, reward in r.items()})
    contrasts = {"dpo": (CHOSEN, REJECTED), "conditional": (CHOSEN, CHOSEN_REJECTED_IMAGE)}
    for name, (better, worse) in contrasts.items():
        if better in r and worse in r:
            margin = r[better] - r[worse]
            values[f"margins/{name}"] = margin
            values[f"accuracy/{name}"] = (margin > 0).float()
    values.update({f"logps/{name}": logp.detach() for name, logp in policy.items()})
    values[COUNT] = torch.ones_like(out.losses, dtype=torch.float32)
    return values


class Sums:
    """Running sums of per-example metrics (kept on the device until `vector`)."""

    def __init__(self) -> None:
        self.totals: dict[str, torch.Tensor] = {}

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            total = value.float().sum()
            self.totals[name] = self.totals[name] + total if name in self.totals else total

    def vector(self) -> tuple[list[str], torch.Tensor]:
        names = sorted(self.totals)
        return names, torch.stack([self.totals[n] for n in names]) if names else torch.zeros(0)


def means(names: list[str], totals: list[float]) -> dict[str, float]:
    """Sums -> means over examples (the count itself is reported as `examples`)."""
    sums = dict(zip(names, totals))
    count = sums.pop(COUNT, 0.0)
    out = {name: value / count for name, value in sums.items()} if count else {}
    out["examples"] = int(count)
    return out


class MetricsLog:
    """RUN/metrics.jsonl: one JSON object per logged step and split. On resume, lines past the
    checkpoint's step are dropped so the log matches the resumed trajectory."""

    def __init__(self, path: str | Path, *, resume_step: int | None = None, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            open_log(self.path, "w").close()
        elif self.path.exists():
            kept = [line for line in read_jsonl(self.path) if line.get("step", 0) <= resume_step]
            with open_log(self.path, "w") as handle:
                handle.write("".join(json.dumps(line) + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open_log(self.path, "a") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL log; a torn line (a run killed mid-write) is dropped."""
    records = []
    for line in Path(path).read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
