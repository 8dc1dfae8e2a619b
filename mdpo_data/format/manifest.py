"""manifest.json: what a build folder holds, how it was made, and what scored it.

Layout (typed below; `load_manifest` is the ONE loader every reader goes through):
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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdpo_data.config.build import BuildConfig
from mdpo_data.format import schema
from mdpo_data.format.shards import SHARD_RE, write_bytes_atomic

MANIFEST_NAME = "manifest.json"
EXPORT_FILE_RE = re.compile(r"^data/[a-z]+-\d{5}-of-\d{5}\.parquet$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# The typed manifest
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardEntry:
    file: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class ExportFile:
    """A parquet file of a Hub export (`data/...`), as `mdpo-data push --dry-run` wrote it."""

    file: str
    split: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class RejectedImage:
    spec: str
    resolved: str | None = None
    description: str | None = None
    model_input: str | None = None  # `noise`: the model input space it was added in (JSON)
    clipped_share: float | None = None  # `noise`: share of values clipped to 0-255
    pipeline: str | None = None  # `albumentations:FILE`: the pipeline file's text
    pipeline_sha256: str | None = None


@dataclass(frozen=True)
class Counts:
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
class Fingerprint:
    """The scorer's identity (other keys it records are kept as they are)."""

    model: str
    key: str | None = None
    revision: str | None = None
    dtype: str | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class Reference:
    scored: bool = False
    fingerprint: Fingerprint | None = None
    no_image_logps: bool = False
    columns: list[str] = field(default_factory=list)
    rows_scored: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    skip_rule: str | None = None


@dataclass(frozen=True)
class Manifest:
    format_version: str
    config: dict[str, Any]
    counts: Counts
    splits: dict[str, list[ShardEntry]]
    reference: Reference | None
    command: str | None = None
    config_key: str | None = None
    rejected_image: RejectedImage | None = None
    rejected_response: dict[str, Any] = field(default_factory=dict)
    system_prompt: dict[str, Any] = field(default_factory=dict)  # see mdpo_data.build.system_prompts
    versions: dict[str, str] = field(default_factory=dict)
    export: list[ExportFile] | None = None  # only in a Hub export: its parquet files' hashes

    def entries(self) -> list[tuple[str, ShardEntry]]:
        """(split, entry) of every listed shard, in split order."""
        return [(split, e) for split in schema.SPLITS for e in self.splits.get(split, [])]

    @property
    def scored(self) -> bool:
        return bool(self.reference and self.reference.scored)


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


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is dict:
        return "an object" if args[1] is Any else f"an object of {_describe(args[1])}"
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if dataclasses.is_dataclass(hint):
        return "an object"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(hint, "anything")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` checked against the type hint `hint` (dataclasses built); else ManifestError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    bad = ManifestError(f"field {where} must be {_describe(hint)}, got {json.dumps(value)[:60]}")
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _coerce(value, arg, where)
                except ManifestError:
                    continue
        raise bad
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise bad
        return _build(hint, value, where + ".")
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise bad
    return value


def _build(cls, data: dict[str, Any], prefix: str = ""):
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ManifestError(f"field {prefix}{f.name} is missing")
            continue
        values[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name)
    return cls(**values)


def _check_config(config: dict[str, Any]) -> None:
    """Known build options must have BuildConfig's types (unknown keys: a newer minor)."""
    hints = typing.get_type_hints(BuildConfig)
    for name, value in config.items():
        if name in hints:
            _coerce(value, hints[name], f"config.{name}")


def _check_entries(manifest: Manifest) -> None:
    """Shard entries name files of THIS folder (no paths), with a plausible hash and count."""
    for split, entries in manifest.splits.items():
        for i, entry in enumerate(entries):
            where = f"splits.{split}[{i}]"
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
    for name, value in dataclasses.asdict(manifest.counts).items():
        if isinstance(value, int) and value < 0:
            raise ManifestError(f"field counts.{name} must be >= 0, got {value}")


def parse_manifest(data: Any) -> Manifest:
    """A manifest dict -> Manifest; ManifestError naming the first bad or missing field."""
    if not isinstance(data, dict):
        raise ManifestError(f"not a JSON object (got {type(data).__name__})")
    if "format_version" not in data:
        raise ManifestError("field format_version is missing")
    version = _check_version(data["format_version"])
    manifest = _build(Manifest, {**data, "format_version": version})
    _check_config(manifest.config)
    _check_entries(manifest)
    return manifest


def load_manifest_data(directory: str | Path) -> tuple[Manifest, dict[str, Any]]:
    """(typed manifest, the validated dict as stored) of a build folder."""
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
        return parse_manifest(data), data
    except ManifestError as error:
        raise ManifestError(f"{path}: {error}") from None


def load_manifest(directory: str | Path) -> Manifest:
    return load_manifest_data(directory)[0]


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest as a plain dict, validated by `load_manifest` (the one loader)."""
    return load_manifest_data(directory)[1]


# ---------------------------------------------------------------------------------------------
# Writing and small helpers
# ---------------------------------------------------------------------------------------------


def manifest_path(directory: str | Path) -> Path:
    return Path(directory) / MANIFEST_NAME


def dumps(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> None:
    write_bytes_atomic(manifest_path(directory), dumps(manifest))


def shard_entries(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    return list(manifest.get("splits", {}).get(split, []))


def is_scored(manifest: dict[str, Any]) -> bool:
    return bool((manifest.get("reference") or {}).get("scored"))
