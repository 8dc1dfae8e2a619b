"""A miniature of the MDPO paper's experiment (Fig. 2, Table 3) on the demo task, on a CPU.

    python benchmarks/repro_mini.py --out out/repro

1. Data: a demo build whose TRAIN pairs carry a text-only shortcut (`--demo-style-shortcut`:
   in that share of train pairs the chosen answer is phrased plainly and the rejected one opens
   with "Sure! ", so style predicts the preference without the image) and a style-balanced
   eval split (both answers of a pair in the same, random style); rejected image crop:0-0.2;
   scored once by `--ref-model demo` with the no-image columns.
2. Runs, from the same shards with the same seeds and steps: dpo, dpo_no_image (trainer option
   `no_image`: text only, against the stored no-image reference), mdpo, mdpo_no_cond,
   mdpo_no_anchor; 3 seeds each.
3. Metrics on the eval split, for each run and for the untrained reference:
   preference_accuracy  implicit reward of chosen > rejected (with the image); the reference's
                        rewards are all 0, a tie, counted 1/2
   answer_accuracy      forced choice log p(right) > log p(wrong), both answers in the same
                        template, each eval question asked in both styles
   image_reliance       mean log p(y_w|m_w) - log p(y_w|m_l), nats
Writes OUT/results.json, OUT/results.md, OUT/results.png; per-run results are cached in
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
import warnings
from pathlib import Path

RUNS = {  # run name -> trainer options
    "dpo": {"loss": "dpo"},
    "dpo_no_image": {"loss": "dpo", "no_image": True},
    "mdpo": {"loss": "mdpo"},
    "mdpo_no_cond": {"loss": "mdpo_no_cond"},
    "mdpo_no_anchor": {"loss": "mdpo_no_anchor"},
}
METRICS = ("preference_accuracy", "answer_accuracy", "image_reliance")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--train", type=int, default=256, help="train pairs")
    parser.add_argument("--eval", type=int, default=128, help="eval pairs")
    parser.add_argument("--shortcut", type=float, default=0.9, help="share of train pairs with the style cue")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--finetune", choices=("lora", "full"), default="lora")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--ref-model", default="demo")
    return parser.parse_args(argv)


# ------------------------------------------------------------------ data
def build_data(args) -> Path:
    """The scored demo build (resumable: an identical finished build is reused)."""
    data = args.out / "data"
    total = args.train + args.eval
    command = [
        sys.executable, "-m", "mdpo_data.cli", "build", "--source", "demo", "--n", str(total),
        "--demo-size", str(total), "--eval-fraction", str(args.eval / total),
        "--demo-style-shortcut", str(args.shortcut), "--rejected", "crop:0-0.2",
        "--ref-model", args.ref_model, "--no-image-logps", "--out", str(data), "--quiet",
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return data


def eval_rows(data: Path) -> tuple[list[dict], int]:
    """The eval split's rows (storage form) and the build seed."""
    from mdpo_data.format.manifest import load_manifest
    from mdpo_data.format.shards import read_shard, shard_files

    rows = [row for f in shard_files(data, "eval") for row in read_shard(f).to_pylist()]
    return rows, int(load_manifest(data).config["seed"])


# ------------------------------------------------------------------ metrics
def measure(model, processor, rows: list[dict], seed: int) -> dict[str, float]:
    """The three metrics of one model on the eval rows."""
    import torch

    from mdpo_data.demo import evaluate as demo_eval

    from mdpo_data.format import schema
    from mdpo_data.scoring.logprobs import row_sequences, sequence_logps
    from mdpo_data.sources.demo import make_candidate

    columns = schema.REF_LOGP_COLUMNS  # chosen, rejected, chosen under m_l
    seqs = [row_sequences(row)[c] for row in rows for c in columns]
    candidates = [make_candidate(seed, row["source_row"], families=(f, f), matched=True)
                  for row in rows for f in (0, 1)]
    model.eval()
    with torch.inference_mode():
        logps = [v[0] for v in sequence_logps(model, processor, seqs, batch_size=48)]
        margins = demo_eval.forced_choice(model, processor, candidates, batch_size=48)
    wins, reliance = [], []
    for i, row in enumerate(rows):
        chosen, rejected, chosen_ml = logps[3 * i : 3 * i + 3]
        margin = (chosen - row[schema.REF_CHOSEN]) - (rejected - row[schema.REF_REJECTED])
        wins.append(0.5 if abs(margin) < 1e-4 else float(margin > 0))
        reliance.append(chosen - chosen_ml)
    return {
        "preference_accuracy": statistics.fmean(wins),
        "answer_accuracy": statistics.fmean(float(m > 0) for m in margins),
        "image_reliance": statistics.fmean(reliance),
    }


# ------------------------------------------------------------------ training
def _reset_accelerate() -> None:
    """One accelerate state per run (a command line would use one process per run)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def train_and_measure(args, data: Path, name: str, seed: int, rows, build_seed, *, runs=RUNS,
                      measure_fn=None) -> dict[str, float]:
    """Train run `name` (trainer options `runs[name]`) with `seed`; `measure_fn(model, processor)`
    (default: this benchmark's `measure` on the eval rows) gives its metrics, cached on disk."""
    from mdpo_train.config import build_config
    from mdpo_train.loop import MDPORecipe

    run_dir = args.out / "runs" / f"{name}-seed{seed}"
    cached = run_dir / "repro_metrics.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if run_dir.exists():  # an interrupted run: start it again
        import shutil

        shutil.rmtree(run_dir)
    options = {
        "shards": str(data), "output_dir": str(run_dir), **runs[name], "beta": args.beta,
        "lr": args.lr, "epochs": args.epochs, "global_batch_size": args.batch,
        "per_device_batch_size": args.batch, "finetune": args.finetune, "seed": seed,
        "warmup_ratio": 0.1, "save_steps": 0, "progress": False, "logging_steps": 5,
        "spot_check_rows": 2, "eval_steps": 10**9,
    }
    if args.finetune == "lora":
        options.update({"lora_r": args.lora_r, "lora_alpha": 2 * args.lora_r, "lora_dropout": 0.0})
    _reset_accelerate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recipe = MDPORecipe(build_config(options))
        recipe.setup()
        recipe.train()
    model = recipe.accelerator.unwrap_model(recipe.model)
    if measure_fn is None:
        result = measure(model, recipe.processor, rows, build_seed)
    else:
        result = measure_fn(model, recipe.processor)
    result["steps"] = recipe.position.global_step
    cached.write_text(json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------ outputs
def aggregate(reference: dict, per_run: dict[str, list[dict]]) -> dict:
    out = {"reference": {m: reference[m] for m in METRICS}}
    for name, results in per_run.items():
        out[name] = {
            m: {"mean": statistics.fmean(r[m] for r in results),
                "std": statistics.stdev([r[m] for r in results]) if len(results) > 1 else 0.0,
                "n_seeds": len(results)}
            for m in METRICS
        }
    return out


def write_markdown(results: dict, path: Path, setup: str) -> None:
    lines = ["| model | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    ref = results["reference"]
    lines.append("| reference (demo model) | " + " | ".join(
        f"{ref[m]:.1%}" if m != "image_reliance" else f"{ref[m]:.2f}" for m in METRICS) + " |")
    for name, metrics in results.items():
        if name == "reference":
            continue
        cells = []
        for m in METRICS:
            mean, std = metrics[m]["mean"], metrics[m]["std"]
            cells.append(f"{mean:.2f} ± {std:.2f}" if m == "image_reliance" else f"{mean:.1%} ± {std:.1%}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    n = next((v["preference_accuracy"]["n_seeds"] for k, v in results.items() if k != "reference"), 0)
    path.write_text(f"{setup}\n\nMean ± std over {n} seeds; image_reliance in nats.\n\n"
                    + "\n".join(lines) + "\n")


def write_figure(results: dict, path: Path, metrics=METRICS, *, error: str = "std", zoom: bool = True,
                 width: float = 11) -> None:
    """One bar chart per metric: each run's mean with its `error` bar ("std" or "ci95"), the
    reference dashed. `zoom`: a rate's axis starts 0.1 below the lowest bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in results if k != "reference"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(width, 3.2))
    for ax, metric in zip(axes, metrics):
        means = [results[n][metric]["mean"] for n in names]
        errors = [results[n][metric][error] for n in names]
        ax.bar(range(len(names)), means, yerr=errors, capsize=3,
               color=["#888", "#bbb", "#c33", "#e99", "#e99"][: len(names)])
        ax.axhline(results["reference"][metric], color="k", linestyle="--", linewidth=1, label="reference")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=10)
        if zoom and metric != "image_reliance":
            low = min(means + [results["reference"][metric]]) - 0.1
            ax.set_ylim(max(0.0, low), 1.0)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = build_data(args)
    print(f"data: {data} ({time.perf_counter() - started:.0f}s)", flush=True)
    rows, build_seed = eval_rows(data)
    from mdpo_data.scoring.models import load_model

    ref_model, processor = load_model(args.ref_model)
    reference = measure(ref_model, processor, rows, build_seed)
    del ref_model
    print(f"reference: {reference}", flush=True)
    per_run: dict[str, list[dict]] = {}
    for name in args.runs:
        for seed in args.seeds:
            t = time.perf_counter()
            result = train_and_measure(args, data, name, seed, rows, build_seed)
            per_run.setdefault(name, []).append(result)
            print(f"{name} seed {seed}: {json.dumps(result)} ({time.perf_counter() - t:.0f}s)", flush=True)
    results = aggregate(reference, per_run)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    setup = (f"`python benchmarks/repro_mini.py --out OUT --train {args.train} --eval {args.eval} "
             f"--shortcut {args.shortcut} --epochs {args.epochs} --batch {args.batch} --lr {args.lr} "
             f"--beta {args.beta} --finetune {args.finetune}`: {len(rows)} eval pairs, "
             f"{per_run[args.runs[0]][0]['steps']} steps per run")
    write_markdown(results, args.out / "results.md", setup)
    write_figure(results, args.out / "results.png")
    print(f"done in {time.perf_counter() - started:.0f}s: {args.out}/results.{{json,md,png}}")
    if not all(math.isfinite(v) for v in reference.values()):
        sys.exit("non-finite reference metrics")


if __name__ == "__main__":
    main()
