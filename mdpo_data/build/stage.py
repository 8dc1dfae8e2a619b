"""The build recipe: source -> sample -> contrast -> shards + manifest (-> score -> card).

Read top to bottom: `BuildConfig` holds every option that shapes the output (its hash keys
resume markers); `run_build` plans the sample (cheap, text only, recomputed on every run),
then writes each shard atomically from worker processes, skipping shards a previous run
finished with the same config AND the same candidate rows (each shard's marker records a
fingerprint of the rows' content, so an edited source re-makes the shards it touches). The
manifest is written last, so a folder with a manifest is a finished build. The output folder
must be new, empty or ours (`mdpo_data.format.folder`), and is locked while the build runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdpo_data.format import schema

from mdpo_data.format import markers as stage_state
from mdpo_data.config.build import BuildConfig, BuildError, portable_spec, portable_text
from mdpo_data.format.folder import STATE_DIR, check_target, clear_data_folder, hold, owned_files
from mdpo_data.config.typecheck import from_json
from mdpo_data.format.manifest import (
    MANIFEST_NAME, Counts, Manifest, ManifestError, RejectedImage, RejectedResponse, ShardEntry, load_manifest,
    write_manifest,
)
from mdpo_data.format.versions import library_versions
from mdpo_data.sources.records import Candidate, Skip
from mdpo_data.config.pipeline import problems as settings_problems
from mdpo_data.config.runtime import Runtime
from mdpo_data.build.sampling import draw, split_eval
from mdpo_data.build.seeds import example_seed
from mdpo_data.format.shards import SHARD_RE, sha256_file, shard_name, write_bytes_atomic, write_shard
from mdpo_data.format.markers import BuildMarker, drop_markers, read_json, read_marker
from mdpo_data.format.integrity import stream_rows
from mdpo_data.build.resume import images_unchanged
from mdpo_data.build.worker import Task, make_example, worker_init

WRITE_BATCH = 64  # rows per Arrow record batch: bounds memory while a shard is written


@dataclass
class BuildResult:
    directory: Path
    manifest: Manifest | None
    shards_reused: int = 0
    shards_written: int = 0


# ---------------------------------------------------------------------------------------------
# Planning (main process, text only)
# ---------------------------------------------------------------------------------------------


def model_input(config: BuildConfig):
    """The ModelInput `noise` works in, or None for its default (LLaVA-1.5's)."""
    from mdpo_data.rejected.model_input import ModelInput

    return ModelInput.from_json(config.noise_input) if config.noise_input else None


def plan(config: BuildConfig):
    """Sample the examples and their swap partners -> (splits, pool, strategy, partners)."""
    from mdpo_data.rejected.registry import parse_spec
    from mdpo_data.rejected.swap import pick_partner
    from mdpo_data.sources import get as get_source, open_source

    strategy = parse_spec(config.rejected, model_input(config))
    items = open_source(
        config.source,
        path=config.source_path,
        seed=config.seed,
        pairing=config.pairing,
        subset=config.subset,
        id_prefix=config.id_prefix,
        image_root=config.image_root,
        columns=config.columns,
        demo_size=config.demo_size,
        demo_first_row=config.demo_first_row,
        demo_prior=config.demo_prior,
    )
    keep_missing = bool(config.rejected_response)
    pool, sampled, missing = draw(items, config.n, config.seed, keep_missing)
    if missing and not keep_missing:
        if missing == pool.available:
            raise BuildError(
                f"source {config.source!r} has no rejected responses ({missing} gold-answer "
                "rows): pass --rejected-response weaken[:T] or inject to bootstrap them (BPO)."
            )
        pool.skipped["missing_rejected_response"] += missing
    if not sampled:
        raise BuildError(
            f"source {config.source!r} yielded no usable pairs ({pool.rows} source rows read; "
            f"skipped: {dict(pool.skipped) or 'none'})"
        )
    source = get_source(config.source)
    sampled = source.after_sampling(config, sampled)
    if len(sampled) < config.n:
        warnings.warn(
            f"only {len(sampled)} pairs available from {config.source!r}, fewer than "
            f"--n {config.n}; writing all of them (recorded in the manifest)",
            stacklevel=2,
        )
    partners: dict[str, Any] = {}
    if strategy.needs_partner:
        keys = [c.image.key for c in sampled]
        for i, c in enumerate(sampled):
            j = pick_partner(i, keys, example_seed(config.seed, c.example_id, "swap"))
            partners[c.example_id] = sampled[j].image
    splits = split_eval(sampled, config.eval_fraction)
    splits = source.after_split(config, splits)
    return splits, pool, strategy, partners


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


def _identity(ref) -> list[Any]:
    """An image's content identity without reading it (`ImageRef.identity`); [] for none."""
    return [] if ref is None else ref.identity()


def rows_fingerprint(tasks: list[Task]) -> str:
    """sha256 of exactly what goes into a shard: each candidate's text, ids, metadata, image
    identity, swap partner and per-example seed. A resumed build reuses a shard only when
    this matches the fingerprint its marker recorded."""
    digest = hashlib.sha256()
    for task in tasks:
        c = task.candidate
        content = [c.example_id, c.source_id, c.question, c.chosen, c.rejected, c.meta,
                   _identity(c.image), _identity(task.partner), task.seed,
                   task.response_strategy]
        digest.update(json.dumps(content, sort_keys=True, default=str).encode() + b"\n")
    return digest.hexdigest()


def _finished(directory: Path, name: str, key: str, rows_key: str) -> BuildMarker | None:
    """The marker of a shard a previous run completed from these rows with this config, if
    the file still holds the bytes its latest writer (build, or score after it) recorded. A
    torn or foreign marker, or one whose row count is not the shard's, counts as no marker (the
    shard is re-made)."""
    marker = read_marker(directory, "build", name)
    if not stage_state.is_complete(marker, key) or marker.rows_key != rows_key:
        return None
    if not stage_state.vouched_sha256(directory, name):
        return None
    return marker if stream_rows(directory / name) == marker.rows else None


_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")
_OUR_FILES = (MANIFEST_NAME, "README.md", "preview.png", "preview.html")


def _prepare_out(directory: Path, key: str, overwrite: bool) -> None:
    """Refuse to mix two different builds in one folder; clear ours when asked to."""
    state = directory / STATE_DIR
    build_file = state / "build.json"
    if overwrite:
        left = clear_data_folder(directory, _previous_manifest(directory))
        if left:
            warnings.warn(f"--overwrite left {len(left)} file(s) it did not write in {directory}: "
                          f"{', '.join(left[:5])}{' ...' if len(left) > 5 else ''}", stacklevel=2)
    if build_file.is_file():
        info = read_json(build_file)
        previous = info.get("config_key") if isinstance(info, dict) else "unreadable"
        if previous != key:
            raise BuildError(
                f"{directory} already holds a build with a different config (key {previous}, "
                f"this one {key}); use another --out or pass --overwrite"
            )
    elif not overwrite and any(SHARD_RE.match(e.name) for e in directory.iterdir()):
        raise BuildError(f"{directory} holds shards of an unknown build; pass --overwrite")
    for folder in (directory, state):  # half-written files of a killed run (we hold the lock)
        for stale in folder.glob(".*.tmp"):
            match = _TEMP.match(stale.name)
            if folder == state or (match and (SHARD_RE.match(match["name"])
                                              or match["name"] in _OUR_FILES)):
                stale.unlink(missing_ok=True)
    write_bytes_atomic(build_file, json.dumps({"config_key": key}).encode())


def _drop_stale(directory: Path, keep: set[str]) -> None:
    """Remove our shards (and their markers) that this build no longer lists, e.g. after the
    source changed the shard count."""
    for path in owned_files(directory, _previous_manifest(directory)):
        if path.name not in keep:
            path.unlink(missing_ok=True)
            drop_markers(directory, path.name)


def _results(tasks: list[Task], workers: int, pool) -> Iterator[dict[str, Any] | Skip]:
    if pool is None:
        return map(make_example, tasks)
    return pool.imap(make_example, tasks, chunksize=max(1, min(16, len(tasks) // (4 * workers))))


def _write_one_shard(path: Path, tasks, workers, pool, skipped: Counter, on_row, stats: Counter) -> int:
    def batches():
        batch = []
        for value in _results(tasks, workers, pool):
            on_row()
            if isinstance(value, Skip):
                skipped[value.reason] += 1
                continue
            stats.update(value.pop("_stats", {}))
            batch.append(schema.make_row(**value))
            if len(batch) == WRITE_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    return write_shard(path, batches())


def run_build(
    config: BuildConfig,
    out: str | Path,
    *,
    runtime: Runtime | None = None,
    progress: bool = True,
    command: str | None = None,
    after_shard: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build (or resume building) `out` from `config`; `runtime` says how (workers,
    --overwrite, the scoring model's settings). Returns the manifest written.

    Every check (target folder, options, source) runs before anything is created; then the
    folder is created and locked for the rest of the build. Settings made in code get the
    checks the flags get (`config.pipeline.problems`).
    """
    runtime = runtime or Runtime()
    directory = check_target(out)
    problems = settings_problems(config, runtime)
    if problems:
        raise BuildError("; ".join(problems))
    key = config.key()
    planned = plan(config)
    with hold(directory):
        _prepare_out(directory, key, runtime.overwrite)
        return _build_locked(config, directory, key, planned, workers=runtime.workers, progress=progress,
                             command=command, after_shard=after_shard, runtime=runtime)


def _build_locked(config: BuildConfig, directory: Path, key: str, planned, *, workers: int,
                  progress: bool, command: str | None, after_shard, runtime: Runtime) -> BuildResult:
    splits, pool, strategy, partners = planned
    result = BuildResult(directory=directory, manifest=None)
    splits, system_record = _system_prompts(config, splits)
    response_record: dict[str, Any] = {"strategy": "source"}
    bpo_skipped: Counter = Counter()
    sampled = sum(len(rows) for rows in splits.values())
    if config.rejected_response:
        splits, response_record, bpo_skipped = _bootstrap(
            config, splits, pool, directory, runtime, progress
        )
    entries, markers = _write_shards(
        config, directory, key, splits, partners, response_record["strategy"], result,
        workers=workers, progress=progress, after_shard=after_shard,
    )
    _drop_stale(directory, {e.file for es in entries.values() for e in es})
    manifest = _manifest(config, key, command, strategy, response_record, pool, sampled,
                         bpo_skipped, markers, entries, system_record)
    result.manifest = _write_if_changed(directory, key, manifest)
    return result


def _write_if_changed(directory: Path, key: str, manifest: Manifest) -> Manifest:
    """Write the manifest unless the folder already has this one; the shards of a previous
    run that scored exactly these shards keep their `reference` (the scores are in them)."""
    previous = _previous_manifest(directory)
    if previous and previous.config_key == key and previous.splits == manifest.splits:
        manifest = dataclasses.replace(manifest, reference=previous.reference)  # already scored
    if previous != manifest:
        write_manifest(directory, manifest)
    return manifest


def _write_shards(config: BuildConfig, directory: Path, key: str, splits, partners,
                  response_strategy: str, result: BuildResult, *, workers: int, progress: bool,
                  after_shard) -> tuple[dict[str, list[ShardEntry]], list[BuildMarker]]:
    """Write (or reuse) every shard -> (the manifest's split entries, every shard's build marker)."""
    from tqdm.auto import tqdm

    entries: dict[str, list[ShardEntry]] = {}
    markers: list[BuildMarker] = []
    total = sum(len(rows) for rows in splits.values())
    bar = tqdm(total=total, unit="row", desc="build", disable=not progress, dynamic_ncols=True)
    context = multiprocessing.get_context("spawn")
    worker_pool = context.Pool(workers, initializer=worker_init) if workers > 1 else None
    try:
        for split, rows in splits.items():
            entries[split] = []
            for name, chunk in _shard_chunks(split, rows, config.shard_size):
                tasks = _tasks(config, chunk, partners, response_strategy)
                rows_key = rows_fingerprint(tasks)
                done = _finished(directory, name, key, rows_key)
                if done is not None and not images_unchanged(directory / name, tasks):
                    done = None  # an image edited in place (same size and mtime)
                if done is None:
                    done = _make_shard(directory, name, key, rows_key, tasks, workers, worker_pool, bar)
                    result.shards_written += 1
                    if after_shard:
                        after_shard(name)
                else:
                    bar.update(len(chunk))
                    result.shards_reused += 1
                markers.append(done)
                entries[split].append(ShardEntry(file=name, rows=done.rows,
                                                 sha256=stage_state.shard_sha256(directory, name)))
    finally:
        bar.close()
        if worker_pool is not None:
            worker_pool.close()
            worker_pool.join()
    return entries, markers


def _shard_chunks(split: str, rows: list, shard_size: int) -> Iterator[tuple[str, list]]:
    """(shard name, its rows) of one split, in order; an empty split still gets one shard."""
    n_shards = max(1, -(-len(rows) // shard_size))
    for index in range(n_shards):
        yield shard_name(split, index, n_shards), rows[index * shard_size : (index + 1) * shard_size]


def _tasks(config: BuildConfig, chunk: list[Candidate], partners, response_strategy: str) -> list[Task]:
    """The workers' picklable jobs for one shard's candidates."""
    return [
        Task(
            candidate=c,
            partner=partners.get(c.example_id),
            rejected=config.rejected,
            seed=example_seed(config.seed, c.example_id),
            max_pixels=config.max_pixels,
            response_strategy=response_strategy,
            model_input=config.noise_input,
        )
        for c in chunk
    ]


def _make_shard(directory: Path, name: str, key: str, rows_key: str, tasks: list[Task], workers: int,
                worker_pool, bar) -> BuildMarker:
    """Write one shard atomically, then its build marker (which drops any score marker)."""
    skipped: Counter = Counter()
    stats: Counter = Counter()
    n_rows = _write_one_shard(
        directory / name, tasks, workers, worker_pool, skipped, lambda: bar.update(), stats
    )
    done = BuildMarker(key=key, rows_key=rows_key, rows=n_rows, sha256=sha256_file(directory / name),
                       skipped=dict(sorted(skipped.items())), image_stats=dict(sorted(stats.items())))
    stage_state.record(directory, done, name)
    return done


def _manifest(config: BuildConfig, key: str, command: str | None, strategy, response_record,
              pool, sampled: int, bpo_skipped: Counter, markers: list[BuildMarker],
              entries: dict[str, list[ShardEntry]], system_record) -> Manifest:
    """The build's manifest (see `mdpo_data.format.manifest`); no absolute paths."""
    image_stats: Counter = Counter()
    for marker in markers:
        image_stats.update(marker.image_stats)
    return Manifest(
        format_version=schema.FORMAT_VERSION,
        command=command,
        config=config.public(),
        config_key=key,
        rejected_image=RejectedImage(spec=portable_spec(config.rejected), resolved=strategy.resolved,
                                     description=strategy.describe(), extra=strategy.record(image_stats)),
        rejected_response=from_json(RejectedResponse, response_record),
        system_prompt=system_record,
        counts=_counts(config, pool, sampled, bpo_skipped, stage_state.merge_skips(markers), entries),
        splits=entries,
        versions=library_versions(),
        reference=None,
    )


def _counts(config: BuildConfig, pool, sampled: int, bpo_skipped: Counter,
            image_skipped: dict[str, int], entries: dict[str, list[ShardEntry]]) -> Counts:
    """The manifest's counts: planning's (recomputed every run) and the merged stage markers'."""
    by_stage = {  # source: before sampling; responses (BPO) and images: sampled, then dropped
        "source": dict(sorted(pool.skipped.items())),
        "responses": dict(sorted(bpo_skipped.items())),
        "images": image_skipped,
    }
    roots = [str(Path(config.source_path).parent) if config.source_path else "",
             config.source_path or "", config.image_root or ""]
    examples = {k: portable_text(v, roots) for k, v in sorted(pool.skip_examples.items())}
    written = {split: sum(e.rows for e in es) for split, es in entries.items()}
    return Counts(
        read=pool.rows,
        pairs=pool.pairs,
        candidates=pool.available,
        skipped=dict(sorted(sum(map(Counter, by_stage.values()), Counter()).items())),
        skipped_by_stage=by_stage,
        skip_examples=examples,
        requested=config.n,
        sampled=sampled,
        written=sum(written.values()),
        written_by_split=written,
    )


def _system_prompts(config: BuildConfig, splits: dict[str, list[Candidate]]):
    """Set each sampled pair's system prompt (`--system-prompt`); -> (splits, manifest record)."""
    from mdpo_data.build import system_prompts

    flat = [c for rows in splits.values() for c in rows]
    chosen, record = system_prompts.apply(config.system_prompt, config.system_prompt_family, flat)
    out, start = {}, 0
    for split, rows in splits.items():
        out[split], start = chosen[start : start + len(rows)], start + len(rows)
    return out, record


def _previous_manifest(directory: Path) -> Manifest | None:
    """The manifest a previous run left, if it is one (never raises: a broken one is replaced)."""
    try:
        return load_manifest(directory)
    except ManifestError:
        return None


def _bootstrap(config: BuildConfig, splits, pool, directory: Path, runtime: Runtime, progress: bool):
    """BPO: generate rejected answers for sampled pairs that lack one (cached, resumable)."""
    from mdpo_data.bpo.spec import parse_response_strategy
    from mdpo_data.bpo.stage import bootstrap_rejected

    strategy = parse_response_strategy(config.rejected_response)
    model = config.rejected_response_model or runtime.ref_model
    problem = strategy.missing_model(model, config.inject_model)
    if problem:
        raise BuildError(problem)
    out: dict[str, list[Candidate]] = {}
    record: dict[str, Any] = {}
    bpo_skipped: Counter = Counter()
    for split, rows in splits.items():
        todo = [c for c in rows if c.rejected is None]
        filled, skipped, record = bootstrap_rejected(
            todo,
            strategy,
            model=model or "",
            seed=config.seed,
            state_dir=directory / STATE_DIR,
            inject_model=config.inject_model,
            batch_size=runtime.bpo_batch_size,
            device=runtime.device,
            dtype=runtime.dtype,
            max_pixels=config.max_pixels,
            max_new_tokens=config.rejected_response_max_new_tokens,
            trust_remote_code=runtime.trust_remote_code,
            revision=runtime.revision if model == runtime.ref_model else None,
            progress=progress,
            part=split,
        )
        bpo_skipped.update(skipped)
        by_id = {c.example_id: c for c in filled}
        out[split] = [by_id[c.example_id] if c.rejected is None else c for c in rows
                      if c.rejected is not None or c.example_id in by_id]
    record = dict(record or {"strategy": strategy.resolved})
    record.setdefault("strategy", strategy.resolved)
    return out, record, bpo_skipped


def warn_short(manifest: Manifest) -> str | None:
    counts = manifest.counts
    if counts.written < counts.requested:
        return (
            f"wrote {counts.written} of {counts.requested} requested pairs "
            f"(skips by reason are in manifest.json)"
        )
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `mdpo-data build` command")
