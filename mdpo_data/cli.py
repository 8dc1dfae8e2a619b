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

from mdpo_data.config.options import OptionsCommand, dataclass_options

# Runtime fields that are `mdpo-data score` flags (the rest only apply to a build).
SCORE_OPTIONS = ("ref_model", "dtype", "attention", "batch_size", "device", "max_length", "no_image_logps",
                 "trust_remote_code", "revision")


def _manifest_error() -> type[Exception]:
    # Imported on use: this module is the __main__ that spawned build workers re-import, so
    # its top level stays light (no datasets/torch).
    from mdpo_data.format.manifest import ManifestError

    return ManifestError

def _fail(message: str) -> None:
    raise click.ClickException(message)


def _parse_columns(ctx, param, value: str | None) -> dict[str, str] | None:
    """--columns KEY=COLUMN,... -> {key: column}."""
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


def _portable(value: str) -> str:
    """An absolute local path -> its last component: manifests and cards are published, and the
    same config should give the same manifest on every machine."""
    from mdpo_data.config.build import portable_path

    return portable_path(value) or value


# Options that cannot change the output: left out of the recorded command (--out is kept as OUT).
_UNRECORDED = ("quiet", "overwrite", "workers")


def _command_line(ctx: click.Context) -> str:
    """The command as given (flags in the order typed, from click's parameter sources), minus
    what cannot change the output, so the manifest of a given config is the same on every
    machine."""
    from mdpo_data.config.options import given

    params = {p.name: p for p in ctx.command.get_params(ctx)}
    args = [ctx.info_name]
    for name, value in given(ctx).items():
        opt = params[name].opts[0]
        if name in _UNRECORDED:
            continue
        if name == "out":
            args += [opt, "OUT"]
        elif params[name].is_flag:
            args.append(opt)
        elif isinstance(value, dict):  # --columns, as typed
            args += [opt, ",".join(f"{k}={v}" for k, v in value.items())]
        elif name == "rejected":
            from mdpo_data.config.build import portable_spec

            args += [opt, portable_spec(str(value))]
        else:
            args += [opt, _portable(str(value))]
    return shlex.join(["mdpo-data", *args])


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


class _Group(click.Group):
    """Turns the errors a user can cause (unwritable folder, disk full, a folder that is not
    ours, a bad manifest) into one line and exit status 1, in every command."""

    def invoke(self, ctx):
        from mdpo_data.format.folder import FolderError
        from mdpo_data.format.integrity import IntegrityError

        try:
            return super().invoke(ctx)
        except (FolderError, IntegrityError, _manifest_error()) as error:
            raise click.ClickException(str(error)) from None
        except OSError as error:
            where = f" ({error.filename})" if getattr(error, "filename", None) else ""
            raise click.ClickException(f"{error.strerror or error}{where}") from None


def _check_device(device: str | None) -> None:
    """A device torch knows and this machine has ("auto" always passes), checked up front."""
    if not device or device == "auto":
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{device!r} is not a device (auto, cpu, cuda, cuda:0, mps)",
                                 param_hint="--device") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(f"{device!r}: no CUDA GPU is available here", param_hint="--device")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise click.BadParameter(f"{device!r}: only {torch.cuda.device_count()} GPU(s)", param_hint="--device")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise click.BadParameter(f"{device!r}: MPS is not available here", param_hint="--device")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mdpo-toolkit")
def main() -> None:
    """Build MDPO preference datasets whose reference log-probs travel with the data.

    Quick start (no network): mdpo-data build --source demo --n 200 --ref-model tiny --out out/demo
    """


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


def _build_classes():
    from mdpo_data.config.build import BuildConfig
    from mdpo_data.config.runtime import Runtime

    return BuildConfig, Runtime


@main.command(cls=OptionsCommand)
@click.option("--pipeline", "--config", "pipeline", type=click.Path(dir_okay=False),
              help="YAML with the same options (dashes or underscores); flags override it.")
@dataclass_options(_build_classes, overrides={"columns": {"callback": _parse_columns, "metavar": "KEY=COLUMN,..."}})
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def build(ctx, pipeline, quiet, **_) -> None:
    """Build a preference dataset into Arrow shards + manifest.json (+ scores + card).

    \b
    mdpo-data build --source demo --n 200 --out out/demo
    mdpo-data build --source silkie --subset llava --n 10000 --rejected crop:0-0.2 \\
        --ref-model llava-hf/llava-1.5-7b-hf --out out/silkie
    mdpo-data build --pipeline pipelines/paper_silkie_crop.yaml --out out/paper
    """
    from mdpo_data.build.stage import run_build
    from mdpo_data.config.build import BuildError
    from mdpo_data.rejected.registry import SpecError
    from mdpo_data.format.folder import FolderError
    from mdpo_data.sources import SourceError

    config, runtime = _build_settings_checked(ctx, pipeline)
    out = runtime.out
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            result = run_build(
                config,
                out,
                progress=not quiet,
                command=_command_line(ctx),
                runtime=runtime,
            )
        except (BuildError, SourceError, SpecError, FolderError) as error:
            _fail(str(error))
    for warning in caught:
        click.secho(f"warning: {warning.message}", fg="yellow", err=True)
    _report_build(result, out, time.perf_counter() - started)
    if runtime.ref_model:
        _score(out, runtime, quiet)
    _write_card(out)


def _report_build(result, out: str, elapsed: float) -> None:
    """The summary table of a finished build; exit 1 when it wrote no train row."""
    from mdpo_data.build.stage import warn_short

    manifest = result.manifest
    counts = manifest.counts
    rows = [
        ("source rows read", counts.read),
        ("pairs formed", counts.pairs),
        ("unique pairs", counts.candidates),
        ("sampled", f"{counts.sampled} (requested {counts.requested})"),
    ]
    rows += [(f"skipped: {k}", v) for k, v in counts.skipped.items()]
    rows += [(f"written: {k}", v) for k, v in counts.written_by_split.items()]
    rows += [
        ("shards", f"{result.shards_written} written, {result.shards_reused} reused"),
        ("rejected image", manifest.rejected_image.resolved),
        ("time", f"{elapsed:.1f}s ({counts.sampled / max(elapsed, 1e-9):.1f} rows/s)"),
        ("output", str(Path(out))),
    ]
    click.echo("\n" + _table(rows))
    short = warn_short(manifest)
    if short:
        click.secho(f"warning: {short}", fg="yellow", err=True)
    if not counts.written_by_split.get("train"):
        reasons = ", ".join(f"{k}: {v}" for k, v in counts.skipped.items()) or "none recorded"
        _fail(f"the build wrote 0 train rows: every one of the {counts.sampled} sampled pairs "
              f"was skipped (skips: {reasons}); see {Path(out) / 'manifest.json'}")



def _build_settings_checked(ctx: click.Context, pipeline: str | None):
    """(BuildConfig, Runtime) from defaults < the pipeline file < the flags given, checked once
    (every problem in one line), then the checks that need the resolved values."""
    from mdpo_data.config.options import given
    from mdpo_data.format.folder import FolderError, check_target
    from mdpo_data.config.pipeline import PipelineError, load_pipeline, merge, settings

    flags = {k: v for k, v in given(ctx).items() if k not in ("pipeline", "quiet")}
    try:
        config, runtime = settings(merge(load_pipeline(pipeline) if pipeline else {}, flags), _model_input)
    except PipelineError as error:
        raise click.UsageError(str(error)) from None
    if not runtime.out:
        raise click.UsageError("--out is required (or `out:` in the pipeline file)")
    if runtime.ref_model or config.rejected_response:
        _check_device(runtime.device)
    try:
        check_target(runtime.out)
    except FolderError as error:
        _fail(str(error))
    return config, runtime


def _model_input(runtime) -> str:
    """The reference model's image input space (for `--rejected noise:T`), as JSON."""
    from transformers import AutoProcessor

    from mdpo_data.rejected.model_input import ModelInput
    from mdpo_data.scoring.models import resolve_model

    model = runtime.ref_model
    try:
        processor = AutoProcessor.from_pretrained(
            resolve_model(model), revision=runtime.revision, trust_remote_code=runtime.trust_remote_code)
    except Exception as error:  # noqa: BLE001 - reported as one line
        _fail(f"--rejected noise: cannot load the image processor of --ref-model {model!r} to add the "
              f"noise at its input resolution ({type(error).__name__}: {error})")
    return ModelInput.of(getattr(processor, "image_processor", processor)).to_json()


def _score(out, runtime, quiet: bool, force: bool = False) -> None:
    from mdpo_data.scoring.stage import score_build

    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # model loading bars

    try:
        stats = score_build(
            out,
            runtime.ref_model,
            dtype=runtime.dtype,
            attention=runtime.attention,
            batch_size=runtime.batch_size,
            device=runtime.device,
            max_length=runtime.max_length,
            no_image_logps=runtime.no_image_logps,
            trust_remote_code=runtime.trust_remote_code,
            revision=runtime.revision,
            progress=not quiet,
            force=force,
        )
    except (ValueError, OSError) as error:  # ManifestError is a ValueError
        _fail(f"scoring failed: {error}")
    if stats:
        from mdpo_data.scoring.memory import memory_line

        click.echo("\n" + _table([(f"score: {k}", v) for k, v in stats.items() if not isinstance(v, dict)]))
        click.echo(f"score: {memory_line(stats['batch_size'], stats, 'sequences')}")


def _write_card(out, *, force: bool = False, strict: bool = False) -> None:
    """Write the data card. A README.md the user edited is kept: `card` refuses (strict),
    build and score say so and go on."""
    from mdpo_data.report.card import EditedCard, write_card

    try:
        path = write_card(out, force=force)
    except EditedCard as error:
        if strict:
            _fail(str(error))
        click.secho(f"warning: {error}", fg="yellow", err=True)
        return
    click.echo(f"data card: {path}")


# --------------------------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------------------------


def _runtime_class():
    from mdpo_data.config.runtime import Runtime

    return (Runtime,)


@main.command(cls=OptionsCommand)
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@dataclass_options(_runtime_class, only=SCORE_OPTIONS, overrides={"ref_model": {
    "required": True, "help": "Reference model id or local path ('tiny': smoke-test model; 'demo': demo model)."}})
@click.option("--force", is_flag=True, help="Re-score shards scored with a different fingerprint.")
@click.option("--quiet", is_flag=True)
def score(directory, quiet, force, **options) -> None:
    """Store the reference model's log-probs in the shards (once; resumable).

    \b
    mdpo-data score out/demo --ref-model tiny
    accelerate launch -m mdpo_data.cli score out/silkie --ref-model llava-hf/llava-1.5-7b-hf --dtype bfloat16
    """
    from mdpo_data.config.options import check_fields
    from mdpo_data.config.runtime import Runtime

    values, problems = check_fields(Runtime, options)  # choices and bounds, every problem at once
    if problems:
        raise click.UsageError("; ".join(problems))
    runtime = Runtime(**{**options, **values})
    _check_device(runtime.device)
    _score(directory, runtime, quiet, force=force)
    _write_card(directory)


# --------------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------------


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--rows", "n_rows", type=click.IntRange(min=0), default=3, show_default=True, help="Example rows to print.")
def inspect(directory, n_rows) -> None:
    """Summarize a build: config, counts, shards, reference fingerprint, image reliance, rows."""
    from mdpo_data.format import schema
    from mdpo_data.format.manifest import load_manifest
    from mdpo_data.format.integrity import verified_shards
    from mdpo_data.format.shards import read_shard

    try:
        manifest = load_manifest(directory)
    except _manifest_error() as error:
        _fail(str(error))
    config, counts, image = manifest.config, manifest.counts, manifest.rejected_image
    source = str(config.get("source", "?"))  # config: the options as recorded, a plain mapping
    rows = [
        ("command", manifest.command or "-"),
        ("source", source + (f" ({config['source_path']})" if config.get("source_path") else "")),
        ("seed", config.get("seed", "-")),
        ("rejected image", f"{image.resolved}: {image.description or ''}" if image else "?"),
        ("rejected response", manifest.rejected_response.strategy),
        ("rows read / pairs / unique / sampled", " / ".join(
            "-" if n is None else str(n) for n in (counts.read, counts.pairs, counts.candidates, counts.sampled))),
    ]
    rows += [(f"skipped: {k}", v) for k, v in counts.skipped.items()]
    for split, entries in manifest.splits.items():
        rows.append((f"{split}", f"{sum(e.rows for e in entries)} rows in {len(entries)} shard(s)"))
    if manifest.scored:
        fp = manifest.fingerprint
        rows.append(("reference", f"{fp.model} ({fp.dtype}, max length {fp.max_length})" if fp else "?"))
        for k, v in manifest.reference.skipped.items():
            rows.append((f"score skipped: {k}", v))
    else:
        rows.append(("reference", "not scored (run `mdpo-data score DIR --ref-model ...`)"))
    click.echo(_table(rows))

    files = list(verified_shards(directory, manifest, "train"))
    if manifest.scored and files:
        import pyarrow as pa

        from mdpo_data.report.reliance import reliance_stats

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
@click.option("--force", is_flag=True, help="Replace a README.md that was edited by hand.")
def card(directory, force) -> None:
    """Write DIR/README.md, the dataset card (YAML front matter + what, how, counts, citations).

    A README.md edited since mdpo-data wrote it is kept (the command refuses) unless --force."""
    try:
        _write_card(directory, force=force, strict=True)
    except (_manifest_error(), FileNotFoundError) as error:
        _fail(str(error))


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--n", type=click.IntRange(min=1), default=16, show_default=True, help="Examples to show.")
@click.option("--out", type=click.Path(file_okay=False), help="Where to write preview.png/.html [DIR].")
def preview(directory, n, out) -> None:
    """Write a PNG contact sheet and an HTML page: chosen vs rejected image, answers, log-probs."""
    from mdpo_data.report.preview import write_preview

    try:
        png, html = write_preview(directory, n=n, out=out)
    except (_manifest_error(), FileNotFoundError) as error:
        _fail(str(error))
    click.echo(f"preview: {png}\npreview: {html}")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def validate(directory) -> None:
    """Check schema, checksums, row counts, images, reference columns and ids; list every problem."""
    from mdpo_data.report.validate import validate as run_validate

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
    from mdpo_data.report.publish import export_hub_folder
    from mdpo_data.report.publish import push as run_push

    try:
        if dry_run is not None:  # `--dry-run ""` (an unset variable) is an error, never an upload
            path = export_hub_folder(directory, dry_run)
            click.echo(f"dry run: the upload folder is {path} (nothing uploaded)")
            return
        url = run_push(directory, repo, private=private, token=token, allow_smoke_test=allow_smoke_test)
    except (ValueError, OSError) as error:
        _fail(str(error))
    click.echo(f"pushed: {url}")


if __name__ == "__main__":
    main()
