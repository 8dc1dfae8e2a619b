"""The paper's failure mode in miniature: a language prior that DPO may follow and MDPO resist.

    python benchmarks/repro_prior.py --out out/prior

The design, metrics and pass/fail reading were fixed before any run (docs/results.md,
"Language prior (pre-registered 2026-12-04)"). In short:

1. Data: a demo build in the prior world (`--demo-prior 0.9`: circles mostly red, squares
   blue, triangles green) whose TRAIN pairs are mostly counter-prior with the prior's answer
   rejected (`--demo-prior-pairs 0.9`), so "avoid the prior's answer" predicts the preference
   without the image; the EVAL pairs alternate prior-consistent / counter-prior. Scored by
   `--ref-model demo-prior` with the no-image columns.
2. Runs (repro_mini's trainer settings): dpo, dpo_no_image, mdpo, mdpo_no_cond,
   mdpo_no_anchor, 5 seeds each, and the untrained reference.
3. Metrics on held-out scenes: forced-choice answer accuracy per half, POPE-style presence
   questions (random / popular / adversarial negatives; the `mdpo-eval pope` evaluator), CHAIR
   on "Describe the image." answers; on the eval split: preference accuracy (per half) and
   image reliance.
Writes OUT/results.json, OUT/results.md, OUT/results.png; per-run metrics are cached in
OUT/runs/*/repro_metrics.json, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import repro_mini  # noqa: E402  (the trainer loop, the accelerate reset and the figure are shared)

RUNS = repro_mini.RUNS
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
HEADLINE = ("answer_consistent", "answer_counter", "answer_balanced", "pope_adversarial_f1",
            "pope_adversarial_yes_ratio", "chair_i", "chair_s", "preference_accuracy", "image_reliance")
FIGURE = ("answer_consistent", "answer_counter", "pope_adversarial_f1", "chair_i", "image_reliance")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--eval", type=int, default=128)
    parser.add_argument("--prior", type=float, default=0.9, help="the world's --demo-prior")
    parser.add_argument("--prior-pairs", type=float, default=0.9, help="--demo-prior-pairs")
    parser.add_argument("--heldout", type=int, default=200, help="held-out forced-choice pairs")
    parser.add_argument("--scenes", type=int, default=100, help="held-out scenes for POPE and CHAIR each")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--finetune", choices=("lora", "full"), default="lora")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--ref-model", default="demo-prior")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: tabulate the runs already measured in OUT/runs")
    return parser.parse_args(argv)


# ------------------------------------------------------------------ data
def build_data(args) -> Path:
    data = args.out / "data"
    total = args.train + args.eval
    command = [
        sys.executable, "-m", "mdpo_data.cli", "build", "--source", "demo", "--n", str(total),
        "--demo-size", str(total), "--eval-fraction", str(args.eval / total),
        "--demo-prior", str(args.prior), "--demo-prior-pairs", str(args.prior_pairs),
        "--rejected", "crop:0-0.2", "--ref-model", args.ref_model, "--no-image-logps",
        "--out", str(data), "--quiet",
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return data


def split_rows(data: Path, split: str) -> list[dict]:
    from mdpo_data.format.shards import read_shard, shard_files

    return [row for f in shard_files(data, split) for row in read_shard(f).to_pylist()]


def text_rule_accuracy(rows: list[dict]) -> float:
    """Preference accuracy of "prefer the answer that is not the prior's" (ties 1/2)."""
    wins = []
    for row in rows:
        meta = json.loads(row["metadata"])
        prior = meta.get("prior_answer")
        wins.append(1.0 if meta["wrong"] == prior else 0.0 if meta["answer"] == prior else 0.5)
    return statistics.fmean(wins)


class Heldout:
    """The held-out questions, made once: forced-choice prior pairs, POPE, CHAIR scenes."""

    def __init__(self, args, build_seed: int):
        from mdpo_data.demo.hallucination import CHAIR_FIRST_ROW, heldout_scenes, pope_images, pope_questions
        from mdpo_data.report.pope import parse_line
        from mdpo_data.sources.demo import HELDOUT_FIRST_ROW, PRIOR_KINDS, make_candidate

        self.pairs = [make_candidate(build_seed, HELDOUT_FIRST_ROW + i, prior=args.prior,
                                     kind=PRIOR_KINDS[i % 2], families=((i // 2) % 2,) * 2, matched=True)
                      for i in range(args.heldout)]
        self.pope = {s: [parse_line(json.dumps(q)) for q in qs]
                     for s, qs in pope_questions(args.scenes, seed=build_seed, prior=args.prior).items()}
        self.pope_images = {name: image_of_ref(ref) for name, ref in
                            pope_images(args.scenes, seed=build_seed, prior=args.prior).items()}
        chair = heldout_scenes(args.scenes, CHAIR_FIRST_ROW, seed=build_seed, prior=args.prior)
        self.chair_images = [image_of_ref(ref) for ref, _ in chair]
        self.chair_scenes = [scene for _, scene in chair]


def image_of_ref(ref):
    from mdpo_data.scoring.logprobs import decode_image

    return decode_image(ref.load())


# ------------------------------------------------------------------ metrics
def measure(model, processor, rows: list[dict], held: Heldout) -> dict[str, float]:
    import torch

    from mdpo_data.bpo.generate import greedy_texts
    from mdpo_data.demo import evaluate as demo_eval
    from mdpo_data.demo.hallucination import DESCRIBE, chair
    from mdpo_data.format import schema
    from mdpo_data.report import pope
    from mdpo_data.scoring.logprobs import row_sequences, sequence_logps

    model.eval()
    out: dict[str, float] = {}
    with torch.inference_mode():
        # eval split: preference accuracy (per half) and image reliance
        seqs = [row_sequences(row)[c] for row in rows for c in schema.REF_LOGP_COLUMNS]
        logps = [v[0] for v in sequence_logps(model, processor, seqs, batch_size=48)]
        wins: dict[str, list[float]] = {"consistent": [], "counter": []}
        reliance = []
        for i, row in enumerate(rows):
            chosen, rejected, chosen_ml = logps[3 * i : 3 * i + 3]
            margin = (chosen - row[schema.REF_CHOSEN]) - (rejected - row[schema.REF_REJECTED])
            wins[json.loads(row["metadata"])["prior"]].append(0.5 if abs(margin) < 1e-4 else float(margin > 0))
            reliance.append(chosen - chosen_ml)
        out["preference_accuracy"] = statistics.fmean(wins["consistent"] + wins["counter"])
        for half, values in wins.items():
            out[f"preference_{half}"] = statistics.fmean(values)
        out["image_reliance"] = statistics.fmean(reliance)
        # held-out forced choice, per half
        margins = demo_eval.forced_choice(model, processor, held.pairs, batch_size=48)
        for half in ("consistent", "counter"):
            right = [m > 0 for m, c in zip(margins, held.pairs) if c.meta["prior"] == half]
            out[f"answer_{half}"] = statistics.fmean(map(float, right))
        out["answer_balanced"] = (out["answer_consistent"] + out["answer_counter"]) / 2
        # POPE: each distinct (image, question) answered once, scored per setting
        unique = list({(q.image, q.text): q for qs in held.pope.values() for q in qs}.values())
        answers = pope.answer(model, processor, unique, held.pope_images, batch_size=50)
        said = {(a["image"], a["text"]): a["prediction"] for a in answers}
        for setting, questions in held.pope.items():
            got = pope.scores([said[(q.image, q.text)] for q in questions], [q.label for q in questions])
            for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
                out[f"pope_{setting}_{key}"] = got[key]
        # CHAIR on greedy descriptions
        texts = [g.text for g in greedy_texts(model, processor, held.chair_images,
                                              [DESCRIBE] * len(held.chair_images), max_new_tokens=40,
                                              batch_size=50)]
        out.update(chair(texts, held.chair_scenes))
    return out


# ------------------------------------------------------------------ outputs
def aggregate(reference: dict, per_run: dict[str, list[dict]]) -> dict:
    out = {"reference": dict(reference)}
    for name, results in per_run.items():
        out[name] = {}
        for metric in reference:
            values = [r[metric] for r in results]
            mean = statistics.fmean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            half = T_975.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values)) if len(values) > 1 else 0.0
            out[name][metric] = {"mean": mean, "ci95": half, "sd": sd, "n_seeds": len(values)}
    return out


def _cell(metric: str, value: float, half: float | None = None) -> str:
    nats = metric in ("image_reliance", "mentions")
    text = f"{value:.2f}" if nats else f"{value:.1%}"
    if half is not None:
        text += f" ± {half:.2f}" if nats else f" ± {half:.1%}"
    return text


def write_markdown(results: dict, path: Path, setup: str, metrics=HEADLINE, reference_name="demo-prior") -> None:
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    ref = results["reference"]
    lines.append(f"| reference ({reference_name}) | " + " | ".join(_cell(m, ref[m]) for m in metrics) + " |")
    for name, values in results.items():
        if name != "reference":
            lines.append(f"| {name} | " + " | ".join(_cell(m, values[m]["mean"], values[m]["ci95"])
                                                      for m in metrics) + " |")
    path.write_text(f"{setup}\n\nMean ± 95% interval half-width (t, n-1 degrees of freedom); "
                    "image_reliance in nats.\n\n" + "\n".join(lines) + "\n")


def write_figure(results: dict, path: Path) -> None:
    repro_mini.write_figure(results, path, FIGURE, error="ci95", zoom=False, width=14)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = build_data(args)
    from mdpo_data.format.manifest import load_manifest

    build_seed = int(load_manifest(data).config["seed"])
    rows = split_rows(data, "eval")
    rule = text_rule_accuracy(split_rows(data, "train"))
    print(f"data: {data} ({time.perf_counter() - started:.0f}s); text-only rule on train: {rule:.1%}", flush=True)
    held = Heldout(args, build_seed)
    from mdpo_data.scoring.models import load_model

    ref_file = args.out / "reference_metrics.json"
    if ref_file.is_file():
        reference = json.loads(ref_file.read_text())
    else:
        ref_model, processor = load_model(args.ref_model)
        reference = measure(ref_model, processor, rows, held)
        del ref_model
        ref_file.write_text(json.dumps(reference, indent=2))
    print(f"reference: {json.dumps({k: round(v, 3) for k, v in reference.items()})}", flush=True)
    per_run: dict[str, list[dict]] = {name: [] for name in args.runs}
    for seed in args.seeds:  # seeds outermost: an interrupted run has every model at some seeds
        for name in args.runs:
            t = time.perf_counter()
            cached = args.out / "runs" / f"{name}-seed{seed}" / "repro_metrics.json"
            if args.report_only and not cached.is_file():
                continue
            result = repro_mini.train_and_measure(
                args, data, name, seed, rows, build_seed,
                measure_fn=lambda model, processor: measure(model, processor, rows, held))
            per_run[name].append(result)
            print(f"{name} seed {seed}: " + json.dumps({k: round(result[k], 3) for k in HEADLINE})
                  + f" ({time.perf_counter() - t:.0f}s)", flush=True)
    per_run = {name: results for name, results in per_run.items() if results}
    results = aggregate(reference, per_run)
    results["data"] = {"text_rule_train_preference_accuracy": rule, "eval_pairs": len(rows)}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    seeds = sorted({len(v) for v in per_run.values()})
    steps = next(iter(per_run.values()))[0]["steps"]
    setup = (f"`python benchmarks/repro_prior.py --out OUT --prior {args.prior} --prior-pairs {args.prior_pairs} "
             f"--epochs {args.epochs} --batch {args.batch} --lr {args.lr} --beta {args.beta} "
             f"--finetune {args.finetune}`: {len(rows)} eval pairs, {steps} steps per run, "
             f"{'/'.join(map(str, seeds))} seeds per run; text-only rule on the train pairs: {rule:.1%}")
    table = {k: v for k, v in results.items() if k != "data"}
    write_markdown(table, args.out / "results.md", setup, reference_name=args.ref_model)
    write_markdown(table, args.out / "results_all.md", setup, metrics=tuple(reference),
                   reference_name=args.ref_model)
    write_figure(table, args.out / "results.png")
    print(f"done in {time.perf_counter() - started:.0f}s: {args.out}/results.{{json,md,png}}")


if __name__ == "__main__":
    main()
