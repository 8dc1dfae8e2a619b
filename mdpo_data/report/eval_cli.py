"""`mdpo-eval`: hallucination benchmarks for a model or a trained adapter.

    mdpo-eval demo-pope --out pope/                       # the demo world's questions, POPE format
    mdpo-eval pope --model demo-prior --questions pope/demo_pope_adversarial.json \\
        --image-root pope/images --out runs/pope-adv [--adapter runs/mdpo]

Thin glue over `mdpo_data.report.pope` (one evaluator for real POPE files and the demo export).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mdpo_data.format.folder import EVAL, FolderError, check_target, claim, write_owned


def _check_out(out: str) -> None:
    """--out follows the ownership rule of every writing command: new, empty, or ours."""
    try:
        check_target(out, "--out", EVAL)
    except FolderError as error:
        raise click.ClickException(str(error)) from None


def _claim(out: str) -> Path:
    try:
        return claim(out, EVAL)
    except (FolderError, OSError) as error:
        raise click.ClickException(f"--out {out}: {error}") from None


@click.group()
def main() -> None:
    """Evaluate a vision-language model (optionally with an mdpo-train adapter)."""


@main.command()
@click.option("--model", required=True, help="Local model folder or a built-in name (demo, demo-prior).")
@click.option("--adapter", type=click.Path(file_okay=False), default=None,
              help="An mdpo-train LoRA run folder (adapter_config.json) applied to --model.")
@click.option("--questions", required=True, type=click.Path(dir_okay=False),
              help="POPE-format JSON lines: question_id, image, text, label (yes/no).")
@click.option("--image-root", required=True, type=click.Path(file_okay=False),
              help="Folder the questions' image names resolve under (never escaped).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Writes OUT/answers.jsonl (per question) and OUT/metrics.json.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--max-new-tokens", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def pope(model, adapter, questions, image_root, out, batch_size, max_new_tokens, device, quiet) -> None:
    """Greedy yes/no answers, parsed as POPE does; accuracy, precision, recall, F1, yes-ratio.

    A malformed line or a missing image is reported on one line and counted; the rest is scored."""
    from tqdm.auto import tqdm

    from mdpo_data.report import pope as evaluator
    from mdpo_data.scoring.models import ModelLoadError

    _check_out(out)
    if not Path(questions).is_file():
        raise click.ClickException(f"--questions {questions}: no such file")
    if not Path(image_root).is_dir():
        raise click.ClickException(f"--image-root {image_root}: no such folder")
    items, errors = evaluator.read_questions(questions)
    images, image_errors = evaluator.load_images(items, image_root)
    errors += image_errors
    for line in errors:
        click.echo(f"skipped: {line}", err=True)
    if not images:
        raise click.ClickException(f"{questions}: no answerable question ({len(errors)} errors)")
    try:
        model_obj, processor = evaluator.load_with_adapter(model, adapter, device=device)
    except (ModelLoadError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    todo = sum(q.image in images for q in items)
    with tqdm(total=todo, unit="question", desc="pope", disable=quiet, file=sys.stderr) as bar:
        answers = evaluator.answer(model_obj, processor, items, images, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, progress=bar.update)
    metrics = evaluator.scores([a["prediction"] for a in answers], [a["label"] for a in answers])
    metrics.update(skipped=len(errors), errors=errors)
    out = _claim(out)
    evaluator.write_answers(out, answers)
    write_owned(out, out / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    click.echo(f"{metrics['n']} questions ({len(errors)} skipped): accuracy {metrics['accuracy']:.1%}, "
               f"precision {metrics['precision']:.1%}, recall {metrics['recall']:.1%}, "
               f"F1 {metrics['f1']:.1%}, yes-ratio {metrics['yes_ratio']:.1%} -> {out}")


@main.command("demo-pope")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Writes OUT/images/*.png and OUT/demo_pope_{random,popular,adversarial}.json.")
@click.option("--n", default=100, show_default=True, type=click.IntRange(min=1), help="Held-out scenes.")
@click.option("--seed", default=0, show_default=True)
@click.option("--prior", default=0.9, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="The world's --demo-prior (the distractor groups' share in their usual colour).")
def demo_pope(out, n, seed, prior) -> None:
    """Export the demo world's presence questions in POPE's format (2 per scene and setting)."""
    from mdpo_data.demo.hallucination import export_pope

    _check_out(out)
    files = export_pope(_claim(out), n, seed=seed, prior=prior)
    click.echo(f"{n} scenes, {2 * n} questions per setting: " + ", ".join(str(f) for f in files))


if __name__ == "__main__":
    main()
