"""The build recipe: source -> sample -> contrast -> shards + manifest (-> score -> card).

Read top to bottom: `BuildConfig` holds every option that shapes the output (its hash keys
resume markers); `run_build` plans the sample (cheap, text only, recomputed on every run),
then writes each shard atomically from worker processes, skipping shards a previous run
finished with the same config. The manifest is written last, so a folder with a manifest
is a finished build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import shutil
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdpo_data import schema
from mdpo_data.manifest import MANIFEST_NAME, library_versions, manifest_path, write_manifest
from mdpo_data.records import Candidate
from mdpo_data.sampling import collect, sample, split_eval
from mdpo_data.seeds import example_seed
from mdpo_data.shards import SHARD_RE, sha256_file, shard_name, write_bytes_atomic, write_shard
from mdpo_data.worker import Task, make_example, worker_init

STATE_DIR = ".state"
WRITE_BATCH = 64  # rows per Arrow record batch: bounds memory while a shard is written


class BuildError(ValueError):
    """A problem with the build's configuration or output folder, reported before any work."""


@dataclass
class BuildConfig:
    """Every option that shapes the output bytes. Runtime-only options live elsewhere."""

    source: str = "demo"
    n: int = 1000
    rejected: str = "crop:0-0.2"
    seed: int = 0
    source_path: str | None = None
    image_root: str | None = None
    pairing: str = "best-worst"
    subset: str | None = None
    id_prefix: str | None = None
    columns: dict[str, str] | None = None
    demo_size: int = 2000
    demo_first_row: int = 0  # demo: first row of the pool (the demo model trains on other rows)
    demo_style_shortcut: float = 0.0  # demo: share of TRAIN pairs phrased chosen=plain, rejected=chatty
    eval_fraction: float = 0.0
    shard_size: int = 1000
    max_pixels: int = 40_000_000
    rejected_response: str | None = None  # BPO bootstrapping, e.g. "weaken:900" or "inject"
    rejected_response_model: str | None = None  # generates weakened answers (default: --ref-model)
    inject_model: str | None = None  # text LLM that rewrites gold answers for "inject"
    rejected_response_max_new_tokens: int = 256  # longer generations are counted skips

    def key(self) -> str:
        """Hash of the config and of the libraries whose output bytes it fixes."""
        versions = library_versions("pillow", "albumentations", "torch", "torchvision", "numpy")
        payload = json.dumps(
            {"config": dataclasses.asdict(self), "format": schema.FORMAT_VERSION, "libs": versions},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class BuildResult:
    directory: Path
    manifest: dict[str, Any]
    shards_reused: int = 0
    shards_written: int = 0


# ---------------------------------------------------------------------------------------------
# Planning (main process, text only)
# ---------------------------------------------------------------------------------------------


def plan(config: BuildConfig):
    """Sample the examples and their swap partners -> (splits, pool, strategy, partners)."""
    from mdpo_data.contrast import parse_spec, pick_partner
    from mdpo_data.sources import open_source

    strategy = parse_spec(config.rejected)
    pool = collect(
        open_source(
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
        )
    )
    candidates = pool.candidates
    if config.rejected_response and config.source == "demo":
        # The demo then stands in for a gold-answer source: its own wrong answers are dropped.
        candidates = [dataclasses.replace(c, rejected=None) for c in candidates]
    missing = [c for c in candidates if c.rejected is None]
    if missing and not config.rejected_response:
        if len(missing) == len(candidates):
            raise BuildError(
                f"source {config.source!r} has no rejected responses ({len(missing)} gold-answer "
                "rows): pass --rejected-response weaken[:T] or inject to bootstrap them (BPO)."
            )
        pool.skipped["missing_rejected_response"] += len(missing)
        candidates = [c for c in candidates if c.rejected is not None]
    if not candidates:
        raise BuildError(
            f"source {config.source!r} yielded no usable pairs ({pool.read} rows read; "
            f"skipped: {dict(pool.skipped) or 'none'})"
        )
    sampled = sample(candidates, config.n, config.seed)
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
    if config.demo_style_shortcut and config.source == "demo":
        from mdpo_data.sources.demo import style_shortcut

        splits["train"] = [style_shortcut(c, config.seed, config.demo_style_shortcut) for c in splits["train"]]
    return splits, pool, strategy, partners


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


def _marker_path(directory: Path, name: str) -> Path:
    return directory / STATE_DIR / f"{name}.json"


def _finished(directory: Path, name: str, key: str) -> dict | None:
    """The marker of a shard a previous run completed with this config, if its bytes check out."""
    marker = _marker_path(directory, name)
    if not marker.is_file() or not (directory / name).is_file():
        return None
    info = json.loads(marker.read_text())
    if info.get("config_key") != key:
        return None
    current = sha256_file(directory / name)
    if current != info.get("sha256"):
        # The score stage rewrites finished shards in place; its marker vouches for them.
        from mdpo_data.score import marker_path

        scored = marker_path(directory, directory / name)
        if not scored.is_file() or json.loads(scored.read_text()).get("sha256") != current:
            return None
    return {**info, "sha256": current}


def _prepare_out(directory: Path, key: str, overwrite: bool) -> None:
    """Refuse to mix two different builds in one folder; clear it when asked to."""
    state = directory / STATE_DIR
    build_file = state / "build.json"
    if overwrite and directory.exists():
        for entry in directory.iterdir():
            if SHARD_RE.match(entry.name) or entry.name in (MANIFEST_NAME, STATE_DIR, "README.md"):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if build_file.is_file():
        previous = json.loads(build_file.read_text()).get("config_key")
        if previous != key:
            raise BuildError(
                f"{directory} already holds a build with a different config (key {previous}, "
                f"this one {key}); use another --out or pass --overwrite"
            )
    elif directory.is_dir() and any(SHARD_RE.match(e.name) for e in directory.iterdir()):
        raise BuildError(f"{directory} holds shards of an unknown build; pass --overwrite")
    state.mkdir(parents=True, exist_ok=True)
    for stale in list(directory.glob(".*.tmp")) + list(state.glob(".*.tmp")):
        stale.unlink(missing_ok=True)  # half-written files of a killed run
    write_bytes_atomic(build_file, json.dumps({"config_key": key}).encode())


def _results(tasks: list[Task], workers: int, pool) -> Iterator[tuple[str, Any]]:
    if pool is None:
        return map(make_example, tasks)
    return pool.imap(make_example, tasks, chunksize=max(1, min(16, len(tasks) // (4 * workers))))


def _write_one_shard(path: Path, tasks, workers, pool, skipped: Counter, on_row) -> int:
    def batches():
        batch = []
        for kind, value in _results(tasks, workers, pool):
            on_row()
            if kind == "skip":
                reason, _detail = value
                skipped[reason] += 1
                continue
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
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    after_shard: Callable[[str], None] | None = None,
    runtime: dict[str, Any] | None = None,
) -> BuildResult:
    """Build (or resume building) `out` from `config`. Returns the manifest written."""
    from tqdm.auto import tqdm

    directory = Path(out)
    key = config.key()
    splits, pool, strategy, partners = plan(config)
    _prepare_out(directory, key, overwrite)
    result = BuildResult(directory=directory, manifest={})
    response_record: dict[str, Any] = {"strategy": "source"}
    bpo_skipped: Counter = Counter()
    sampled = sum(len(rows) for rows in splits.values())
    if config.rejected_response:
        splits, response_record, bpo_skipped = _bootstrap(
            config, splits, pool, directory, runtime or {}, progress
        )
    response_strategy = response_record["strategy"]

    contrast_skipped: Counter = Counter()
    entries: dict[str, list[dict[str, Any]]] = {}
    total = sum(len(rows) for rows in splits.values())
    bar = tqdm(total=total, unit="row", desc="build", disable=not progress, dynamic_ncols=True)
    context = multiprocessing.get_context("spawn")
    worker_pool = context.Pool(workers, initializer=worker_init) if workers > 1 else None
    try:
        for split, rows in splits.items():
            n_shards = max(1, -(-len(rows) // config.shard_size))
            entries[split] = []
            for index in range(n_shards):
                name = shard_name(split, index, n_shards)
                chunk = rows[index * config.shard_size : (index + 1) * config.shard_size]
                done = _finished(directory, name, key)
                if done is None:
                    tasks = [
                        Task(
                            candidate=c,
                            partner=partners.get(c.example_id),
                            rejected=config.rejected,
                            seed=example_seed(config.seed, c.example_id),
                            max_pixels=config.max_pixels,
                            response_strategy=response_strategy,
                        )
                        for c in chunk
                    ]
                    skipped: Counter = Counter()
                    n_rows = _write_one_shard(
                        directory / name, tasks, workers, worker_pool, skipped, lambda: bar.update()
                    )
                    done = {
                        "config_key": key,
                        "rows": n_rows,
                        "sha256": sha256_file(directory / name),
                        "skipped": dict(sorted(skipped.items())),
                    }
                    write_bytes_atomic(_marker_path(directory, name), json.dumps(done).encode())
                    result.shards_written += 1
                    if after_shard:
                        after_shard(name)
                else:
                    bar.update(len(chunk))
                    result.shards_reused += 1
                contrast_skipped.update(done["skipped"])
                entries[split].append({"file": name, "rows": done["rows"], "sha256": done["sha256"]})
    finally:
        bar.close()
        if worker_pool is not None:
            worker_pool.close()
            worker_pool.join()

    skipped_all = Counter(pool.skipped) + bpo_skipped + contrast_skipped
    by_stage = {  # source: before sampling; responses (BPO) and images: sampled, then dropped
        "source": dict(sorted(pool.skipped.items())),
        "responses": dict(sorted(bpo_skipped.items())),
        "images": dict(sorted(contrast_skipped.items())),
    }
    written = {split: sum(e["rows"] for e in es) for split, es in entries.items()}
    manifest = {
        "format_version": schema.FORMAT_VERSION,
        "command": command,
        "config": dataclasses.asdict(config),
        "config_key": key,
        "rejected_image": {
            "spec": config.rejected,
            "resolved": strategy.resolved,
            "description": strategy.describe(),
        },
        "rejected_response": response_record,
        "counts": {
            "read": pool.read,
            "candidates": len(pool.candidates),
            "skipped": dict(sorted(skipped_all.items())),
            "skipped_by_stage": by_stage,
            "skip_examples": dict(sorted(pool.skip_examples.items())),
            "requested": config.n,
            "sampled": sampled,
            "written": sum(written.values()),
            "written_by_split": written,
        },
        "splits": entries,
        "versions": library_versions(),
        "reference": None,
    }
    previous = _previous_manifest(directory)
    if previous and previous.get("config_key") == key and previous.get("splits") == entries:
        manifest["reference"] = previous.get("reference")  # same shards, already scored
    if previous != manifest:
        write_manifest(directory, manifest)
    result.manifest = manifest
    return result


def _previous_manifest(directory: Path) -> dict | None:
    """The manifest a previous run left, if readable (unlike read_manifest: never raises)."""
    try:
        return json.loads(manifest_path(directory).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _bootstrap(config: BuildConfig, splits, pool, directory: Path, runtime: dict, progress: bool):
    """BPO: generate rejected answers for sampled pairs that lack one (cached, resumable)."""
    from mdpo_data.bpo import bootstrap_rejected, parse_response_strategy

    strategy = parse_response_strategy(config.rejected_response)
    model = config.rejected_response_model or runtime.get("ref_model")
    if strategy.kind == "weaken" and not model:
        raise BuildError("--rejected-response weaken needs a model: pass --ref-model or --rejected-response-model")
    if strategy.kind == "inject" and not config.inject_model:
        raise BuildError("--rejected-response inject needs --inject-model (a text LLM id or path)")
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
            batch_size=runtime.get("batch_size") or 8,
            device=runtime.get("device") or "auto",
            dtype=runtime.get("dtype") or "auto",
            max_pixels=config.max_pixels,
            max_new_tokens=config.rejected_response_max_new_tokens,
            trust_remote_code=bool(runtime.get("trust_remote_code")),
            revision=runtime.get("revision") if model == runtime.get("ref_model") else None,
            progress=progress,
        )
        bpo_skipped.update(skipped)
        by_id = {c.example_id: c for c in filled}
        out[split] = [by_id[c.example_id] if c.rejected is None else c for c in rows
                      if c.rejected is not None or c.example_id in by_id]
    record = dict(record or {"strategy": strategy.resolved})
    record.setdefault("strategy", strategy.resolved)
    return out, record, bpo_skipped


def warn_short(manifest: dict[str, Any]) -> str | None:
    counts = manifest["counts"]
    if counts["written"] < counts["requested"]:
        return (
            f"wrote {counts['written']} of {counts['requested']} requested pairs "
            f"(skips by reason are in manifest.json)"
        )
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `mdpo-data build` command")
