"""Can a model see the demo scenes? Forced choice and greedy answers, per question type.

Reused by the demo model's build check, its tests and `benchmarks/repro_mini.py`:

- `forced_choice`: log p(right answer) vs log p(wrong answer) for the same image and question,
  both phrased in the same template and family (they differ only in the fact);
- `greedy_answers`: the model's own greedy answer (the BPO stage's decoding), whether it ended
  its turn within `max_new_tokens`, and whether the demo's checker finds it right;
- `evaluate`: both, summarised per question type and overall.

Held-out questions come from rows `demo.HELDOUT_FIRST_ROW`..., which no build and no demo-model
training run samples; families alternate so that the two answer styles are balanced.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from mdpo_data.sources.records import Candidate

TASKS = ("count", "color", "shape", "position", "presence")


def heldout_candidates(n: int, seed: int = 0) -> list[Candidate]:
    """n held-out demo questions, right and wrong answer phrased alike, styles alternating."""
    from mdpo_data.sources.demo import HELDOUT_FIRST_ROW, make_candidate

    rows = range(HELDOUT_FIRST_ROW, HELDOUT_FIRST_ROW + n)
    return [make_candidate(seed, row, families=(i % 2, i % 2), matched=True) for i, row in enumerate(rows)]


def image_of(candidate: Candidate):
    from mdpo_data.scoring.logprobs import decode_image

    return decode_image(candidate.image.load())


def forced_choice(model, processor, candidates: list[Candidate], *, batch_size: int = 32) -> list[float]:
    """Per candidate: log p(chosen | image, q) - log p(rejected | image, q) (> 0: right)."""
    from mdpo_data.scoring.logprobs import Sequence, sequence_logps

    seqs = []
    for c in candidates:
        image = image_of(c)
        seqs += [Sequence(image, c.question, c.chosen), Sequence(image, c.question, c.rejected)]
    values = sequence_logps(model, processor, seqs, batch_size=batch_size)
    return [values[2 * i][0] - values[2 * i + 1][0] for i in range(len(candidates))]


def greedy_answers(model, processor, candidates: list[Candidate], *, max_new_tokens: int = 48,
                   batch_size: int = 32) -> list[tuple[str, bool]]:
    """Per candidate: (greedy answer text, ended its turn within max_new_tokens)."""
    from mdpo_data.bpo.generate import greedy_texts

    images = [image_of(c) for c in candidates]
    generated = greedy_texts(model, processor, images, [c.question for c in candidates],
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [(g.text, g.finished) for g in generated]


def summarize(candidates: list[Candidate], margins: list[float],
              answers: list[tuple[str, bool]] | None = None) -> dict[str, dict[str, Any]]:
    """{task or "overall": {n, forced_choice, [ends_turn, greedy_right]}} as fractions."""
    from mdpo_data.sources.demo import check_answer

    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(candidates):
        groups[c.meta["task"]].append(i)
        groups["overall"].append(i)
    report = {}
    for task in (*TASKS, "overall"):
        index = groups.get(task, [])
        if not index:
            continue
        entry: dict[str, Any] = {"n": len(index),
                                 "forced_choice": sum(margins[i] > 0 for i in index) / len(index)}
        if answers is not None:
            entry["ends_turn"] = sum(answers[i][1] for i in index) / len(index)
            entry["greedy_right"] = sum(
                check_answer(candidates[i].meta, answers[i][0]) is True for i in index) / len(index)
        report[task] = entry
    return report


def evaluate(model, processor, n: int = 400, *, seed: int = 0, max_new_tokens: int = 48) -> dict:
    """Forced choice and greedy answers on n held-out questions, per question type."""
    import torch

    candidates = heldout_candidates(n, seed)
    with torch.inference_mode():
        margins = forced_choice(model, processor, candidates)
        answers = greedy_answers(model, processor, candidates, max_new_tokens=max_new_tokens)
    return summarize(candidates, margins, answers)


def format_report(report: dict[str, dict[str, Any]]) -> str:
    """A markdown table of `summarize`'s output."""
    columns = [k for k in ("forced_choice", "ends_turn", "greedy_right") if k in report["overall"]]
    lines = ["| question type | n | " + " | ".join(columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for task, entry in report.items():
        lines.append(f"| {task} | {entry['n']} | " + " | ".join(f"{entry[c]:.1%}" for c in columns) + " |")
    return "\n".join(lines)


def bootstrapped_report(build_dir) -> dict[str, Any]:
    """For a demo build with `--rejected-response`: rows kept of those sampled, and how often the
    bootstrapped (rejected) answer is wrong / right / unclear for its image, per question type."""
    import json

    from mdpo_data.format import schema
    from mdpo_data.format.manifest import load_manifest
    from mdpo_data.format.integrity import verified_shards
    from mdpo_data.format.shards import read_shard
    from mdpo_data.sources.demo import check_answer

    manifest = load_manifest(build_dir)
    counts = manifest.counts
    verdicts: dict[str, list] = defaultdict(list)
    for split in manifest.splits:
        for f in verified_shards(build_dir, manifest, split):
            for row in read_shard(f).select(["metadata", "rejected"]).to_pylist():
                meta = json.loads(row["metadata"])
                verdict = check_answer(meta, schema.text_of(row["rejected"]))
                verdicts[meta["task"]].append(verdict)
                verdicts["overall"].append(verdict)

    def share(values, target):
        return sum(v is target for v in values) / len(values) if values else 0.0

    return {
        "sampled": counts.sampled, "written": counts.written,
        "kept": counts.written / max(counts.sampled, 1),
        "skipped": dict(counts.skipped),
        "rejected_answer": {task: {"n": len(v), "wrong": share(v, False), "right": share(v, True),
                                   "unclear": share(v, None)} for task, v in verdicts.items()},
    }
