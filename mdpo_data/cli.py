"""`mdpo-data`: build, score, inspect, card, preview, validate and push MDPO preference data.

Thin glue: every command parses options, calls one library function, and turns the
library's own errors (bad spec, bad source, bad folder) into one clear line and exit code.
"""

from __future__ import annotations

import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import click


def _manifest_error() -> type[Exception]:
    # Imported on use: this module is the __main__ that spawned build workers re-import, so
    # its top level stays light (no datasets/torch).
    from mdpo_data.manifest import ManifestError

    return ManifestError

def _fail(message: str) -> None:
    raise click.ClickException(message)


def _parse_columns(value: str | None) -> dict[str, str] | None:
    if not value:
        return None
    mapping = {}
    for part in value.split(","):
        key, sep, column = part.partition("=")
        if not sep or not key.strip() or not column.strip():
            raise click.BadParameter(
                f"{part!r} is not KEY=COLUMN; e.g. --columns image=img,question=q,chosen=a,rejected=b",
                param_hint="--columns",
            )
        mapping[key.strip()] = column.strip()
    return mapping


def _command_line() -> str:
    """The command as typed, minus what cannot change the output (output folder, workers,
    progress), so the manifest of a given config is the same on every machine."""
    drop_flag, drop_with_value = {"--quiet", "--overwrite"}, {"--workers"}
    args, it = [], iter(sys.argv[1:])
    for arg in it:
        name = arg.split("=", 1)[0]
        if name in drop_flag:
            continue
        if name in drop_with_value:
            if "=" not in arg:
                next(it, None)
            continue
        if name == "--out":
            args.append("--out")
            args.append("OUT")
            if "=" not in arg:
                next(it, None)
            continue
        args.append(arg)
    return shlex.join(["mdpo-data", *args])


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mdpo-toolkit")
def main() -> None:
    """Build MDPO preference datasets whose reference log-probs travel with the data.

    Quick start (no network): mdpo-data build --source demo --n 200 --ref-model tiny --out out/demo
    """


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


@main.command()
@click.option("--pipeline", type=click.Path(dir_okay=False), help="YAML with the same options; flags override it.")
@click.option("--source", type=click.Choice(["silkie", "llava-instruct", "pairs", "demo"]), help="Where pairs come from [demo].")
@click.option("--source-path", help="Local file/folder of the source (default: its Hub id).")
@click.option("--image-root", help="Folder that relative image paths resolve under (never escaped).")
@click.option("--n", type=int, help="Pairs to sample [1000].")
@click.option("--rejected", help="Rejected image m_l: crop:LO-HI | swap | moco | noise:T [crop:0-0.2].")
@click.option("--rejected-response", help="Bootstrap missing rejected answers (BPO): weaken[:T] | inject.")
@click.option("--rejected-response-model", help="Model that generates weakened answers [--ref-model].")
@click.option("--inject-model", help="Text LLM for --rejected-response inject.")
@click.option("--rejected-response-max-new-tokens", type=int, help="Longer bootstrapped answers are counted skips [256].")
@click.option("--seed", type=int, help="Build seed: same seed + config = byte-identical output [0].")
@click.option("--pairing", type=click.Choice(["best-worst", "all", "best-random"]), help="Silkie pairing rule [best-worst].")
@click.option("--subset", type=click.Choice(["llava"]), help="Silkie: keep ids starting with llava- (the paper).")
@click.option("--id-prefix", help="Silkie: keep ids with this prefix.")
@click.option("--columns", help="pairs: map columns, e.g. image=img,question=q,chosen=good,rejected=bad.")
@click.option("--demo-size", type=int, help="demo: pairs in the built-in pool [2000].")
@click.option("--demo-first-row", type=int, help="demo: first row of the pool [0].")
@click.option("--demo-style-shortcut", type=float, help="demo: share of train pairs whose chosen answer is plain and rejected chatty (a text-only cue) [0].")
@click.option("--eval-fraction", type=float, help="Share of sampled pairs put in an eval split [0].")
@click.option("--shard-size", type=int, help="Rows per shard [1000].")
@click.option("--max-pixels", type=int, help="Refuse larger images (decompression bombs) [40000000].")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--workers", type=int, help="Image worker processes [1].")
@click.option("--overwrite", is_flag=True, default=None, help="Replace a different build in --out.")
@click.option("--ref-model", help="Score with this reference model after building ('tiny': smoke-test model; 'demo': small model trained on the demo source, built on first use).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), help="Scoring dtype.")
@click.option("--batch-size", type=int, help="Scoring batch size [automatic].")
@click.option("--device", help="Scoring device [auto].")
@click.option("--max-length", type=int, help="Scoring: longest sequence in tokens [2048].")
@click.option("--no-image-logps", is_flag=True, default=None, help="Also store log-probs with the image removed.")
@click.option("--trust-remote-code", is_flag=True, default=None, help="Allow model code from the Hub.")
@click.option("--revision", help="Model revision for --ref-model.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(pipeline, quiet, **flags) -> None:
    """Build a preference dataset into Arrow shards + manifest.json (+ scores + card).

    \b
    mdpo-data build --source demo --n 200 --out out/demo
    mdpo-data build --source silkie --subset llava --n 10000 --rejected crop:0-0.2 \\
        --ref-model llava-hf/llava-1.5-7b-hf --out out/silkie
    mdpo-data build --pipeline pipelines/paper_silkie_crop.yaml --out out/paper
    """
    from mdpo_data.build import BuildError, run_build, warn_short
    from mdpo_data.contrast import SpecError
    from mdpo_data.pipeline_config import PipelineError, build_config, load_pipeline, merge
    from mdpo_data.sources import SourceError

    flags["columns"] = _parse_columns(flags["columns"])
    try:
        options = merge(load_pipeline(pipeline) if pipeline else {}, flags)
        config = build_config(options)
        if config.rejected_response and not config.rejected_response_model:
            config.rejected_response_model = options.get("ref_model")  # recorded in the config key
    except PipelineError as error:
        raise click.UsageError(str(error)) from None
    try:
        from mdpo_data.contrast import parse_spec

        parse_spec(config.rejected)
    except SpecError as error:
        raise click.BadParameter(str(error), param_hint="--rejected") from None
    out = options.get("out")
    if not out:
        raise click.UsageError("--out is required (or `out:` in the pipeline file)")

    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            result = run_build(
                config,
                out,
                workers=options.get("workers") or 1,
                overwrite=bool(options.get("overwrite")),
                progress=not quiet,
                command=_command_line(),
                runtime=options,
            )
        except (BuildError, SourceError, SpecError) as error:
            _fail(str(error))
    for warning in caught:
        click.secho(f"warning: {warning.message}", fg="yellow", err=True)
    elapsed = time.perf_counter() - started
    manifest = result.manifest
    counts = manifest["counts"]
    rows = [
        ("source rows read", counts["read"]),
        ("unique pairs", counts["candidates"]),
        ("sampled", f"{counts['sampled']} (requested {counts['requested']})"),
    ]
    rows += [(f"skipped: {k}", v) for k, v in counts["skipped"].items()]
    rows += [(f"written: {k}", v) for k, v in counts["written_by_split"].items()]
    rows += [
        ("shards", f"{result.shards_written} written, {result.shards_reused} reused"),
        ("rejected image", manifest["rejected_image"]["resolved"]),
        ("time", f"{elapsed:.1f}s ({counts['sampled'] / max(elapsed, 1e-9):.1f} rows/s)"),
        ("output", str(Path(out))),
    ]
    click.echo("\n" + _table(rows))
    short = warn_short(manifest)
    if short:
        click.secho(f"warning: {short}", fg="yellow", err=True)

    if options.get("ref_model"):
        _score(out, options, quiet)
    _write_card(out)


def _score(out, options: dict[str, Any], quiet: bool, force: bool = False) -> None:
    from mdpo_data.score import score_build

    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # model loading bars

    try:
        stats = score_build(
            out,
            options["ref_model"],
            dtype=options.get("dtype") or "auto",
            batch_size=options.get("batch_size"),
            device=options.get("device") or "auto",
            max_length=options.get("max_length") or 2048,
            no_image_logps=bool(options.get("no_image_logps")),
            trust_remote_code=bool(options.get("trust_remote_code")),
            revision=options.get("revision"),
            progress=not quiet,
            force=force,
        )
    except (ValueError, OSError) as error:  # ManifestError is a ValueError
        _fail(f"scoring failed: {error}")
    if stats:
        click.echo("\n" + _table([(f"score: {k}", v) for k, v in stats.items() if not isinstance(v, dict)]))


def _write_card(out) -> None:
    try:
        from mdpo_data.card import write_card
    except ImportError:  # pragma: no cover - card module ships with the package
        return
    path = write_card(out)
    click.echo(f"data card: {path}")


# --------------------------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------------------------


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--ref-model", required=True, help="Reference model id or local path ('tiny': smoke-test model; 'demo': demo model).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True)
@click.option("--batch-size", type=int, help="Sequences per forward [automatic].")
@click.option("--device", default="auto", show_default=True)
@click.option("--max-length", type=int, default=2048, show_default=True, help="Longer examples are counted skips.")
@click.option("--no-image-logps", is_flag=True, help="Also store log-probs with the image removed.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the Hub.")
@click.option("--revision", help="Model revision.")
@click.option("--force", is_flag=True, help="Re-score shards scored with a different fingerprint.")
@click.option("--quiet", is_flag=True)
def score(directory, quiet, force, **options) -> None:
    """Store the reference model's log-probs in the shards (once; resumable).

    \b
    mdpo-data score out/demo --ref-model tiny
    accelerate launch -m mdpo_data.cli score out/silkie --ref-model llava-hf/llava-1.5-7b-hf --dtype bfloat16
    """
    _score(directory, options, quiet, force=force)
    _write_card(directory)


# --------------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------------


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--rows", "n_rows", type=int, default=3, show_default=True, help="Example rows to print.")
def inspect(directory, n_rows) -> None:
    """Summarize a build: config, counts, shards, reference fingerprint, image reliance, rows."""
    from mdpo_data import schema
    from mdpo_data.manifest import is_scored, read_manifest
    from mdpo_data.shards import read_shard, shard_files

    try:
        manifest = read_manifest(directory)
    except _manifest_error() as error:
        _fail(str(error))
    config, counts = manifest["config"], manifest["counts"]
    rows = [
        ("command", manifest.get("command") or "-"),
        ("source", config["source"] + (f" ({config['source_path']})" if config.get("source_path") else "")),
        ("seed", config["seed"]),
        ("rejected image", f"{manifest['rejected_image']['resolved']}: {manifest['rejected_image']['description']}"),
        ("rejected response", manifest.get("rejected_response", {}).get("strategy", "source")),
        ("read / unique / sampled", f"{counts['read']} / {counts['candidates']} / {counts['sampled']}"),
    ]
    rows += [(f"skipped: {k}", v) for k, v in counts["skipped"].items()]
    for split, entries in manifest["splits"].items():
        rows.append((f"{split}", f"{sum(e['rows'] for e in entries)} rows in {len(entries)} shard(s)"))
    reference = manifest.get("reference")
    if is_scored(manifest):
        fp = reference.get("fingerprint", {})
        rows.append(("reference", f"{fp.get('model')} ({fp.get('dtype')}, max length {fp.get('max_length')})"))
        for k, v in (reference.get("skipped") or {}).items():
            rows.append((f"score skipped: {k}", v))
    else:
        rows.append(("reference", "not scored (run `mdpo-data score DIR --ref-model ...`)"))
    click.echo(_table(rows))

    files = shard_files(directory, "train")
    if is_scored(manifest) and files:
        import pyarrow as pa

        from mdpo_data.reliance import reliance_stats

        table = pa.concat_tables([read_shard(f) for f in files])
        click.echo("\nimage reliance of the reference (log p(y_w|m_w) - log p(y_w|m_l), nats):")
        stats = reliance_stats(table)
        click.echo(_table([(k, _fmt(v)) for k, v in _flatten(stats)]))
    if files and n_rows > 0:
        table = read_shard(files[0]).slice(0, n_rows).to_pylist()
        for row in table:
            click.echo(f"\n[{row['example_id']}] {schema.question_of(row['prompt'])}")
            click.echo(f"  chosen:   {_short(schema.text_of(row['chosen']))}")
            click.echo(f"  rejected: {_short(schema.text_of(row['rejected']))}")
            if row[schema.REF_CHOSEN] is not None:
                click.echo(
                    "  ref logps: chosen {:.3f}  rejected {:.3f}  chosen|m_l {:.3f}".format(
                        row[schema.REF_CHOSEN], row[schema.REF_REJECTED], row[schema.REF_CHOSEN_REJECTED_IMAGE]
                    )
                )


def _flatten(stats: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in stats.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------------------------
# card / preview / validate / push
# --------------------------------------------------------------------------------------------


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def card(directory) -> None:
    """Write DIR/README.md, the dataset card (YAML front matter + what, how, counts, citations)."""
    try:
        _write_card(directory)
    except (_manifest_error(), FileNotFoundError) as error:
        _fail(str(error))


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--n", type=int, default=16, show_default=True, help="Examples to show.")
@click.option("--out", type=click.Path(file_okay=False), help="Where to write preview.png/.html [DIR].")
def preview(directory, n, out) -> None:
    """Write a PNG contact sheet and an HTML page: chosen vs rejected image, answers, log-probs."""
    from mdpo_data.preview import write_preview

    try:
        png, html = write_preview(directory, n=n, out=out)
    except (_manifest_error(), FileNotFoundError) as error:
        _fail(str(error))
    click.echo(f"preview: {png}\npreview: {html}")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def validate(directory) -> None:
    """Check schema, checksums, row counts, images, reference columns and ids; list every problem."""
    from mdpo_data.validate import validate as run_validate

    problems = run_validate(directory)
    if problems:
        click.secho(f"{len(problems)} problem(s) in {directory}:", fg="red", err=True)
        for problem in problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    click.secho(f"{directory}: valid", fg="green")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--repo", required=True, help="Hub dataset repo, ORG/NAME.")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--dry-run", "dry_run", type=click.Path(file_okay=False), help="Write the exact upload folder here and stop.")
@click.option("--token", envvar="HF_TOKEN", help="Hub token [$HF_TOKEN or the cached login].")
@click.option("--allow-smoke-test", is_flag=True, help="Allow pushing data scored by the tiny smoke-test model.")
def push(directory, repo, private, dry_run, token, allow_smoke_test) -> None:
    """Export the Hub layout (data/*.parquet, card, manifest) and upload it."""
    from mdpo_data.publish import export_hub_folder
    from mdpo_data.publish import push as run_push

    try:
        if dry_run:
            path = export_hub_folder(directory, dry_run)
            click.echo(f"dry run: the upload folder is {path} (nothing uploaded)")
            return
        url = run_push(directory, repo, private=private, token=token, allow_smoke_test=allow_smoke_test)
    except (ValueError, OSError) as error:
        _fail(str(error))
    click.echo(f"pushed: {url}")


if __name__ == "__main__":
    main()
