"""manifest.json: what a build folder holds, how it was made, and what scored it.

Layout (typed below; `load_manifest` is the ONE loader every reader goes through, and the
build writes a `Manifest` that `score` updates with `dataclasses.replace`):
    format_version   "MAJOR.MINOR" (schema.FORMAT_VERSION; the legacy integer 1 reads as "1.0")
    command          the command line that built it (no output path, no absolute paths)
    config           the resolved build config (types of BuildConfig)
    config_key       hash of the config: resume markers must carry the same one
    rejected_image   {"spec", "resolved", "description"} (+ "model_input", "clipped_share": noise;
                     + "pipeline", "pipeline_sha256": albumentations)
    system_prompt    {"spec", "model_family", "rows_by_origin", ...} (mdpo_data.build.system_prompts)
    counts           {"read" (source file rows), "pairs" (pairs the source formed),
                      "candidates" (unique pairs), "skipped": {reason: n}, "skipped_by_stage":
                      {"source"|"responses"|"images": {reason: n}}, "requested", "sampled",
                      "written", "written_by_split": {split: n}, ...}; the responses' and
                      images' skips are merged from the BPO and build markers (stage_state)
    splits           {split: [{"file", "rows", "sha256"}]}  (file: a shard name in this folder)
    versions         library versions that produced the bytes
    reference        null until scored, then the scorer's fingerprint and stats (its
                     counts merged from the score markers)
    export           only in a Hub export: [{"file": "data/...parquet", "split", "rows",
                     "sha256"}], checked by `mdpo-train` and `validate` before any parquet is read
No timestamps or absolute paths: the same config and seed give a byte-identical manifest.

Versioning (lerobot's CODEBASE_VERSION pattern): a reader reads every minor version of its
major (newer minors only add fields, which older readers ignore) and refuses another major.
A wrong type or a missing field is one ManifestError naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdpo_data.config.build import BuildConfig
from mdpo_data.config.typecheck import MissingField, TypeProblem, check, from_json
from mdpo_data.format import schema
from mdpo_data.format.shards import SHARD_RE, write_bytes_atomic

MANIFEST_NAME = "manifest.json"
EXPORT_FILE_RE = re.compile(r"^data/[a-z]+-\d{5}-of-\d{5}\.parquet$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# The typed manifest. Every record keeps the keys it does not declare in `extra` (a newer
# minor's fields, a strategy's or scorer's own record) and remembers which of its defaulted
# fields the file lacked (`absent`), so reading and writing back is exact.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    absent: frozenset[str] = field(default=frozenset(), kw_only=True, repr=False, compare=False)


@dataclass(frozen=True)
class ShardEntry(Record):
    file: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class ExportFile(Record):
    """A parquet file of a Hub export (`data/...`), as `mdpo-data push --dry-run` wrote it."""

    file: str
    split: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class RejectedImage(Record):
    """The spec as given (portable), as resolved, in words; `extra` is the strategy's own
    `record()` (noise: model_input, clipped_share; albumentations: pipeline, pipeline_sha256)."""

    spec: str
    resolved: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class RejectedResponse(Record):
    """"source" (the source's own rejected answers) or a BPO strategy; `extra`: its record."""

    strategy: str = "source"


@dataclass(frozen=True)
class Counts(Record):
    read: int | None = None  # source file rows
    pairs: int | None = None  # pairs the source formed (silkie: several per row)
    candidates: int | None = None  # unique pairs
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_by_stage: dict[str, dict[str, int]] = field(default_factory=dict)
    skip_examples: dict[str, str] = field(default_factory=dict)
    requested: int | None = None
    sampled: int | None = None
    written: int | None = None
    written_by_split: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Fingerprint(Record):
    """The scorer's identity (`scoring.models.fingerprint`); `extra` holds the rest it records
    (architecture, weights, processor and template hashes, versions, ...)."""

    model: str
    key: str | None = None
    revision: str | None = None
    dtype: str | None = None
    max_length: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return to_json(self)


@dataclass(frozen=True)
class Reference(Record):
    scored: bool = False
    fingerprint: Fingerprint | None = None
    no_image_logps: bool = False
    columns: list[str] = field(default_factory=list)
    rows_scored: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    skip_rule: str | None = None
    batch_size: Any = None  # the scorer's batch size (all of them when shards differed)


@dataclass(frozen=True)
class Manifest(Record):
    format_version: str
    config: dict[str, Any]
    counts: Counts
    splits: dict[str, list[ShardEntry]]
    reference: Reference | None
    command: str | None = None
    config_key: str | None = None
    rejected_image: RejectedImage | None = None
    rejected_response: RejectedResponse = field(default_factory=RejectedResponse)
    system_prompt: dict[str, Any] = field(default_factory=dict)  # see mdpo_data.build.system_prompts
    versions: dict[str, str] = field(default_factory=dict)
    export: list[ExportFile] | None = field(default=None, metadata={"omit_none": True})  # Hub exports only

    def entries(self, split: str | None = None) -> list[tuple[str, ShardEntry]]:
        """(split, entry) of every listed shard (of `split`), in split order."""
        return [(name, e) for name in schema.SPLITS if split in (None, name)
                for e in self.splits.get(name, [])]

    @property
    def scored(self) -> bool:
        return bool(self.reference and self.reference.scored)

    @property
    def fingerprint(self) -> Fingerprint | None:
        return self.reference.fingerprint if self.reference else None


def to_json(value: Any) -> Any:
    """A typed record (or anything holding them) as the JSON the manifest stores: a field the
    file lacked and that still holds its default stays out, as does an unset `export`."""
    if dataclasses.is_dataclass(value):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name in ("extra", "absent") or (item is None and f.metadata.get("omit_none")):
                continue
            if f.name in value.absent and item == _default(f):
                continue
            out[f.name] = to_json(item)
        return {**out, **value.extra}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def parse_version(value: Any) -> tuple[int, int]:
    """"MAJOR.MINOR" (or the legacy integer MAJOR) -> (major, minor)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, 0
    if isinstance(value, str) and re.fullmatch(r"\d+\.\d+", value):
        major, minor = value.split(".")
        return int(major), int(minor)
    raise ManifestError(f"field format_version must be \"MAJOR.MINOR\", got {value!r}")


def _check_version(value: Any) -> str:
    major, minor = parse_version(value)
    ours = parse_version(schema.FORMAT_VERSION)
    if major != ours[0]:
        newer = "a newer" if major > ours[0] else "an older"
        raise ManifestError(
            f"format_version {major}.{minor} was written by {newer} mdpo-data; this one reads "
            f"format {ours[0]}.x (up to {schema.FORMAT_VERSION}): "
            + ("upgrade mdpo-toolkit" if major > ours[0] else "rebuild the data with this version")
        )
    return f"{major}.{minor}"


def _check_config(config: dict[str, Any]) -> None:
    """Known build options must have BuildConfig's types (unknown keys: a newer minor)."""
    hints = typing.get_type_hints(BuildConfig)
    for name, value in config.items():
        if name in hints:
            check(value, hints[name], path=f"config.{name}")


def _check_entries(manifest: Manifest) -> None:
    """Shard entries name files of THIS folder (no paths), with a plausible hash and count."""
    seen: set[str] = set()
    for split, entries in manifest.splits.items():
        if split not in schema.SPLITS:
            raise ManifestError(f"field splits.{split} is not a split ({', '.join(schema.SPLITS)})")
        for i, entry in enumerate(entries):
            where = f"splits.{split}[{i}]"
            if entry.file in seen:
                raise ManifestError(f"field {where}: the manifest lists the shard {entry.file} twice")
            seen.add(entry.file)
            match = SHARD_RE.match(entry.file)
            if Path(entry.file).name != entry.file or not match or match["split"] != split:
                raise ManifestError(f"field {where}.file {entry.file!r} is not a {split} shard "
                                    f"name inside the folder (e.g. {split}-00000-of-00001.arrow)")
            if entry.rows < 0:
                raise ManifestError(f"field {where}.rows must be >= 0, got {entry.rows}")
            if not _SHA256.match(entry.sha256):
                raise ManifestError(f"field {where}.sha256 is not a sha256 hex digest")
    for i, entry in enumerate(manifest.export or []):
        if not EXPORT_FILE_RE.match(entry.file) or not entry.file.startswith(f"data/{entry.split}-"):
            raise ManifestError(f"field export[{i}].file {entry.file!r} is not a parquet file of "
                                f"the export's data/ folder (e.g. data/{entry.split}-00000-of-00001.parquet)")
        if entry.rows < 0 or not _SHA256.match(entry.sha256):
            raise ManifestError(f"field export[{i}] needs rows >= 0 and a sha256 hex digest")
    if manifest.scored and manifest.fingerprint is None:  # the trainer checks its model against it
        raise ManifestError("field reference.fingerprint is missing: a scored build records its scorer")
    if manifest.reference and (manifest.reference.rows_scored or 0) < 0:
        raise ManifestError(f"field reference.rows_scored must be >= 0, got {manifest.reference.rows_scored}")
    if manifest.fingerprint and manifest.fingerprint.max_length is not None and manifest.fingerprint.max_length < 1:
        raise ManifestError("field reference.fingerprint.max_length must be >= 1, got "
                            f"{manifest.fingerprint.max_length}")
    counts = {"counts": dataclasses.asdict(manifest.counts),
              "reference.skipped": manifest.reference.skipped if manifest.reference else {}}
    for name, value in _numbers(counts):
        if value < 0:
            raise ManifestError(f"field {name} must be >= 0, got {value}")


def _numbers(value: Any, path: str = "") -> list[tuple[str, int]]:
    """(path, n) of every whole number in nested counts (skipped by reason, by stage, ...)."""
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _numbers(v, f"{path}.{k}" if path else k)]
    return [(path, value)] if isinstance(value, int) and not isinstance(value, bool) else []


def parse_manifest(data: Any) -> Manifest:
    """A manifest dict -> Manifest; ManifestError naming the first bad or missing field."""
    if not isinstance(data, dict):
        raise ManifestError(f"not a JSON object (got {type(data).__name__})")
    if "format_version" not in data:
        raise ManifestError("field format_version is missing")
    version = _check_version(data["format_version"])
    try:
        manifest = from_json(Manifest, {**data, "format_version": version})
        _check_config(manifest.config)
    except MissingField as problem:
        raise ManifestError(f"field {problem.path} is missing") from None
    except TypeProblem as problem:
        raise ManifestError(f"field {problem.path} must be {problem.expected}, got {problem.got()}") from None
    _check_entries(manifest)
    return manifest


def load_manifest(directory: str | Path) -> Manifest:
    """THE loader: the typed manifest of a build folder or Hub export; ManifestError (one line,
    naming the file and the field) when it is missing, unreadable or malformed."""
    path = manifest_path(directory)
    if not path.is_file():
        raise ManifestError(f"{directory} has no {MANIFEST_NAME}: is it an mdpo-data build folder?")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path} is not valid JSON: {error}") from None
    except (OSError, RecursionError) as error:
        raise ManifestError(f"{path} cannot be read: {error}") from None
    try:
        return parse_manifest(data)
    except ManifestError as error:
        raise ManifestError(f"{path}: {error}") from None


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def manifest_path(directory: str | Path) -> Path:
    return Path(directory) / MANIFEST_NAME


def dumps(manifest: Manifest | dict[str, Any]) -> bytes:
    """The manifest's bytes: sorted keys, so the same build gives the same file. (A plain dict
    is written as given: tests write broken manifests with it.)"""
    data = to_json(manifest)
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_manifest(directory: str | Path, manifest: Manifest | dict[str, Any]) -> None:
    write_bytes_atomic(manifest_path(directory), dumps(manifest))
