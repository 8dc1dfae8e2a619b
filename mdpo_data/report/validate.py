"""Check a build folder (or a Hub export) against its manifest and the shard contract; list
every problem.

`validate` never raises for bad data: a missing manifest, an unreadable shard or a bad row
are all reported as lines, grouped by kind and capped per kind ("... and 812 more"), so one
run shows everything that is wrong. Row-level lines name the shard, the row and the id.

Bytes are checked before they are parsed: a shard is opened with Arrow only when its sha256
matches the manifest, so a flipped or truncated byte is one "checksum" line, never a crash
inside Arrow. Shards that cannot be verified (no valid manifest, not listed) are not read.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from mdpo_data.format import schema
from mdpo_data.build.images import DEFAULT_MAX_PIXELS, load_image
from mdpo_data.format.integrity import IntegrityError, export_problems, verify_entry
from mdpo_data.format.manifest import Manifest, ManifestError, ShardEntry, load_manifest
from mdpo_data.sources.records import BadRow
from mdpo_data.format.shards import SHARD_RE

MAX_PER_KIND = 10  # lines listed per kind of problem; the rest are counted
LOGP_TOLERANCE = 1e-3  # a summed log-prob above this cannot be a log-probability


class Problems:
    """Problem lines grouped by kind, listed up to `cap` per kind, the rest counted."""

    def __init__(self, cap: int = MAX_PER_KIND):
        self.cap = cap
        self.kinds: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, message: str) -> None:
        self.kinds[kind].append(message)

    def lines(self) -> list[str]:
        out = []
        for kind, messages in self.kinds.items():
            out += messages[: self.cap]
            if len(messages) > self.cap:
                out.append(f"... and {len(messages) - self.cap} more {kind} problems")
        return out


def validate(directory: str | Path, *, max_per_kind: int = MAX_PER_KIND) -> list[str]:
    """Every problem found in the build folder `directory`; empty when it is valid."""
    directory = Path(directory)
    problems = Problems(max_per_kind)
    if not directory.is_dir():
        return [f"{directory} is not a directory"]
    try:
        manifest = load_manifest(directory)
    except ManifestError as error:
        problems.add("manifest", f"manifest.json: {error}")
        manifest = None
    if _is_export(directory):
        if manifest is not None:
            _check_export(directory, manifest, problems)
        return problems.lines()
    on_disk = _shards_on_disk(directory, problems)
    listed = _check_listing(manifest, on_disk, problems) if manifest else {}
    seen = _Seen()
    rows_by_split: dict[str, int] = defaultdict(int)
    complete = manifest is not None
    for name, path in on_disk.items():
        entry = listed.get(name)
        if entry is None:  # nothing to verify the bytes against: not parsed
            complete = False
            continue
        try:
            verify_entry(directory, entry)
        except IntegrityError as error:  # not read further
            problems.add("checksum", str(error))
            complete = False
            continue
        rows = _check_shard(path, manifest, seen, problems)
        if rows is None:
            complete = False
            continue
        rows_by_split[SHARD_RE.match(name)["split"]] += rows
        if entry.rows != rows:
            problems.add("rows", f"{name}: {rows} rows, manifest.json says {entry.rows}")
    if manifest:
        _check_state(directory, manifest, problems)
        if complete:
            _check_totals(manifest, rows_by_split, seen, problems)
    return problems.lines()


def _is_export(directory: Path) -> bool:
    """A Hub export (`push --dry-run`): data/*.parquet and no Arrow shards."""
    return (directory / "data").is_dir() and not any(SHARD_RE.match(p.name) for p in directory.iterdir())


def _check_export(directory: Path, manifest: Manifest, problems: Problems) -> None:
    """An export's parquet files against the hashes its manifest lists (before any is parsed),
    then every row, as for a build's shards."""
    import pyarrow.parquet as pq

    found = export_problems(directory, manifest)
    for line in found:
        problems.add("checksum", line)
    if found:
        return
    seen, rows_by_split = _Seen(), defaultdict(int)
    expected = schema.arrow_schema()
    for entry in manifest.export or []:
        path, rows = directory / entry.file, 0
        try:
            parquet = pq.ParquetFile(path)
            if not _same_fields(parquet.schema_arrow, expected):
                _schema_problem(entry.file, parquet.schema_arrow, expected, problems)
                continue
            for batch in parquet.iter_batches():
                _check_rows(entry.file, batch, rows, manifest, seen, problems)
                rows += batch.num_rows
        except (pa.ArrowException, OSError, ValueError, TypeError, KeyError, IndexError) as error:
            problems.add("shard", f"{entry.file}: not a readable parquet file "
                                  f"({' '.join(str(error).split())[:200]})")
            continue
        rows_by_split[entry.split] += rows
    _check_totals(manifest, rows_by_split, seen, problems)
    if not rows_by_split.get("train"):
        problems.add("rows", "split train has 0 rows: nothing to train on")


def _check_state(directory: Path, manifest: Manifest, problems: Problems) -> None:
    """Stale shards: a build marker made under another config than the manifest's, and a
    train split with no rows (a build that wrote nothing usable)."""
    from mdpo_data.format.markers import read_marker

    key = manifest.config_key
    for _, entry in manifest.entries():
        marker = read_marker(directory, "build", entry.file)
        if key and marker is not None and marker.key not in (None, key):
            problems.add("stale", f"{entry.file}: made by another build config "
                                  f"({marker.key}, manifest {key}): stale shard")
    train = manifest.splits.get("train") or []
    if train and not sum(e.rows for e in train):
        problems.add("rows", "split train has 0 rows: nothing to train on")


@dataclass
class _Seen:
    """What the row checks accumulate across shards."""

    ids: dict[str, str] = field(default_factory=dict)  # example_id -> "shard row i"
    unscored_rows: int = 0  # rows of a scored build with every reference column null
    unscored_by_split: Counter = field(default_factory=Counter)


def _check_totals(manifest: Manifest, rows_by_split: dict[str, int], seen: _Seen, problems: Problems) -> None:
    written = manifest.counts.written_by_split
    for split, n in written.items():
        if n != rows_by_split.get(split, 0):
            problems.add("rows", f"split {split}: {rows_by_split.get(split, 0)} rows in shards, "
                                 f"manifest counts.written_by_split says {n}")
    if manifest.scored:
        unknown = [c for c in _reference_columns(manifest) if c not in schema.REFERENCE_COLUMNS]
        if unknown:
            problems.add("manifest", f"manifest.json: reference columns {unknown} are not in the schema")
        skipped = sum(manifest.reference.skipped.values())
        if seen.unscored_rows != skipped:
            problems.add("reference", f"{seen.unscored_rows} row(s) have no reference log-probs, "
                                      f"manifest reference.skipped counts {skipped}")
        train = rows_by_split.get("train", 0)
        if train and seen.unscored_by_split["train"] == train:
            max_length = manifest.fingerprint.max_length if manifest.fingerprint else None
            problems.add("reference", f"split train: the scorer dropped all {train} rows (longer than "
                                      f"max_length {max_length}): nothing to train on; rescore with a "
                                      "larger --max-length (mdpo-data score DIR --ref-model MODEL "
                                      "--max-length N --force)")


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _shards_on_disk(directory: Path, problems: Problems) -> dict[str, Path]:
    """{name: path} of the shard files, in split order; naming problems reported."""
    by_split: dict[str, list[Path]] = defaultdict(list)
    for entry in sorted(directory.iterdir()):
        match = SHARD_RE.match(entry.name)
        if match:
            by_split[match["split"]].append(entry)
    for split in sorted(set(by_split) - set(schema.SPLITS)):
        problems.add("files", f"{by_split[split][0].name}: unknown split {split!r} "
                              f"(expected one of {', '.join(schema.SPLITS)})")
    if not by_split.get("train"):
        problems.add("files", f"{directory} has no train shards (train-00000-of-0000N.arrow)")
    for split, files in by_split.items():
        expected = {f"{split}-{i:05d}-of-{len(files):05d}.arrow" for i in range(len(files))}
        for file in files:
            if file.name not in expected:
                problems.add("files", f"{file.name}: name does not fit the {len(files)} "
                                      f"{split} shard(s) present")
    return {f.name: f for split in schema.SPLITS for f in by_split.get(split, [])}


def _check_listing(manifest: Manifest, on_disk: dict[str, Path], problems: Problems) -> dict[str, ShardEntry]:
    """Compare the manifest's splits with the files present; returns {name: entry}."""
    listed = {}
    for _, entry in manifest.entries():
        listed[entry.file] = entry
        if entry.file not in on_disk:
            problems.add("files", f"{entry.file}: listed in manifest.json but missing")
    for name in on_disk:
        if name not in listed:
            problems.add("files", f"{name}: present but not listed in manifest.json")
    return listed


# ---------------------------------------------------------------------------------------------
# One shard
# ---------------------------------------------------------------------------------------------


def _check_shard(path: Path, manifest: Manifest | None, seen: _Seen, problems: Problems) -> int | None:
    """Check schema and every row of one shard; returns its row count (None if unreadable)."""
    expected = schema.arrow_schema()
    rows = 0
    try:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_stream(source)
            if not reader.schema.equals(expected, check_metadata=True):
                _schema_problem(path.name, reader.schema, expected, problems)
                if not _same_fields(reader.schema, expected):
                    return None
            filled: Counter = Counter()  # non-null reference values, for an unscored build
            for batch in reader:
                _check_rows(path.name, batch, rows, manifest, seen, problems)
                rows += batch.num_rows
                filled.update({c: batch.num_rows - batch.column(c).null_count
                               for c in schema.REFERENCE_COLUMNS})
    except (pa.ArrowException, OSError, ValueError, TypeError, KeyError, IndexError) as error:
        detail = " ".join(str(error).split())[:200]
        problems.add("shard", f"{path.name}: not a readable Arrow stream shard ({detail})")
        return None
    if manifest and not manifest.scored:
        for column, n in filled.items():
            if n:
                problems.add("reference", f"{path.name}: {n} row(s) carry {column} but "
                                          "manifest.json says the build is not scored")
    return rows


def _same_fields(found: pa.Schema, expected: pa.Schema) -> bool:
    return found.remove_metadata().equals(expected.remove_metadata())


def _schema_problem(name: str, found: pa.Schema, expected: pa.Schema, problems: Problems) -> None:
    if _same_fields(found, expected):
        problems.add("schema", f"{name}: the features metadata differs from schema.FEATURES "
                               f"(format_version {schema.FORMAT_VERSION})")
        return
    missing = [f.name for f in expected if f.name not in found.names]
    extra = [f.name for f in found if f.name not in expected.names]
    changed = [f"{f.name} is {found.field(f.name).type}, expected {f.type}"
               for f in expected if f.name in found.names and not found.field(f.name).type.equals(f.type)]
    detail = "; ".join(filter(None, [
        f"missing columns {missing}" if missing else "",
        f"unexpected columns {extra}" if extra else "",
        *changed,
    ])) or "column order differs"
    problems.add("schema", f"{name}: schema differs from schema.arrow_schema() (format_version "
                           f"{schema.FORMAT_VERSION}): {detail}")


def _check_rows(name: str, batch: pa.RecordBatch, offset: int, manifest: Manifest | None,
                seen: _Seen, problems: Problems) -> None:
    max_pixels = (manifest.config.get("max_pixels") if manifest else None) or DEFAULT_MAX_PIXELS
    example_ids = batch.column("example_id").to_pylist()

    def where(i: int) -> str:
        return f"{name} row {offset + i} (example_id {example_ids[i]!r})"

    for i, example_id in enumerate(example_ids):
        if example_id is None:
            problems.add("example_id", f"{where(i)}: example_id is null")
        elif example_id in seen.ids:
            problems.add("example_id", f"{where(i)}: example_id also used by {seen.ids[example_id]}")
        else:
            seen.ids[example_id] = f"{name} row {offset + i}"
    for column in ("images", "rejected_images"):
        for i, cell in enumerate(batch.column(column).to_pylist()):
            _check_image_cell(cell, column, where(i), max_pixels, problems)
    for i, prompt in enumerate(batch.column("prompt").to_pylist()):
        blocks = sum(b["type"] == "image" for m in prompt or [] for b in m["content"] or [])
        if blocks != 1:
            problems.add("prompt", f"{where(i)}: prompt has {blocks} image blocks, expected 1")
        if not schema.question_of(prompt or []).strip():
            problems.add("text", f"{where(i)}: the question is empty")
    for column in ("chosen", "rejected"):
        for i, messages in enumerate(batch.column(column).to_pylist()):
            if not schema.text_of(messages or []).strip():
                problems.add("text", f"{where(i)}: {column} response is empty")
    _check_reference(name, batch, manifest, where, seen, problems)


def _check_image_cell(cell: list | None, column: str, where: str, max_pixels: int,
                      problems: Problems) -> None:
    if cell is None or len(cell) != 1:
        count = 0 if cell is None else len(cell)
        problems.add("image", f"{where}: {column} holds {count} images, expected 1")
        return
    data = cell[0]["bytes"] if cell[0] else None
    if not data:
        problems.add("image", f"{where}: {column}[0] has no embedded bytes")
        return
    try:
        load_image(data, max_pixels=max_pixels)
    except BadRow as error:
        problems.add("image", f"{where}: {column}[0] does not decode ({error})")


def _check_reference(name: str, batch: pa.RecordBatch, manifest: Manifest | None, where, seen: _Seen,
                     problems: Problems) -> None:
    """In a scored build each row's reference columns are all filled and finite, or all null
    (a row the scorer skipped, counted in the manifest)."""
    if manifest is None or not manifest.scored:
        return
    values = {c: batch.column(c).to_pylist() for c in _reference_columns(manifest)
              if c in schema.REFERENCE_COLUMNS}
    for i in range(batch.num_rows):
        if all(values[c][i] is None for c in values):
            seen.unscored_rows += 1
            seen.unscored_by_split[_split_of(name)] += 1
            continue
        for column in values:
            bad = _bad_reference_value(column, values[column][i])
            if bad:
                problems.add("reference", f"{where(i)}: {column} {bad}")


def _split_of(shard_name: str) -> str:
    match = SHARD_RE.match(shard_name)
    return match["split"] if match else ""


def _reference_columns(manifest: Manifest) -> list[str]:
    """The columns the scorer says it filled (older manifests: the required ones)."""
    return manifest.reference.columns or list(schema.REF_LOGP_COLUMNS + schema.TOKEN_COLUMNS)


def _bad_reference_value(column: str, value: Any) -> str:
    if value is None:
        return "is null in a scored build"
    if column in schema.TOKEN_COLUMNS:
        return "" if value > 0 else f"is {value}: a scored response has at least one token"
    if not math.isfinite(value):
        return f"is {value}: not finite"
    if value > LOGP_TOLERANCE:
        return f"is {value}: a summed log-prob cannot be positive"
    return ""
