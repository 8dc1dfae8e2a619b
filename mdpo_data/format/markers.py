"""Completion markers of the pipeline's stages: where they live, how they are read and written,
and how the manifest's counts and hashes are derived from them (datatrove's pattern: a small
JSON file per stage and unit of work, written atomically after the work; a torn or missing
one means "not done").

Every marker is a typed record with the same core: the stage's `key` (what made the work: the
build config, the scorer's fingerprint, BPO's inputs), `rows`, `sha256` (of the shard, or for
BPO of its answers) and `skipped` (reason -> count), plus what the stage itself needs to
resume. Markers of older versions are read the same way (the build's key was "config_key");
one that does not parse is "not done":

    build  DIR/.state/<shard>.json          BuildMarker: + rows_key (the candidate rows), image_stats
    score  DIR/.state/score-<shard>.json    ScoreMarker: + no_image_logps, method, shard, split, batch_size
    bpo    DIR/.state/bpo-<split>.json      BpoMarker: + settings_key, unanswered (id -> [reason, image sha256])
           DIR/.state/bpo-<kind>-<key>.jsonl  BPO's answer cache (append-only; not a marker)

Manifest numbers are merges of markers (`merge_skips`), so a resumed stage reports exactly
what an uninterrupted one does; a shard's manifest hash is the one its latest writer recorded
(`shard_sha256`): score rewrites build's shards, and `record` drops a later stage's marker
whenever an earlier stage rewrites the shard. Stages read each other's state only here.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mdpo_data.config.typecheck import TypeProblem, from_json

from mdpo_data.format.folder import STATE_DIR
from mdpo_data.format.shards import sha256_file, write_bytes_atomic

SHARD_STAGES = ("build", "score")  # the stages that write a shard, in the order they run
_PREFIX = {"build": "", "score": "score-"}


@dataclass(frozen=True)
class Marker:
    """What every stage records when a unit of its work is done."""

    key: str
    rows: int
    sha256: str
    skipped: dict[str, int]

    stage: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class BuildMarker(Marker):
    rows_key: str  # sha256 of the candidate rows the shard was made from
    image_stats: dict[str, int] = field(default_factory=dict)  # the strategy's counts (noise clipping)

    stage: ClassVar[str] = "build"


@dataclass(frozen=True)
class ScoreMarker(Marker):
    shard: str
    split: str
    no_image_logps: bool
    method: str
    batch_size: int | None = None  # bf16 sums depend on the batch composition

    stage: ClassVar[str] = "score"


@dataclass(frozen=True)
class BpoMarker(Marker):
    part: str
    settings_key: str
    unanswered: dict[str, list[str]] = field(default_factory=dict)  # id -> [reason, image sha256]

    stage: ClassVar[str] = "bpo"


MARKERS: dict[str, type[Marker]] = {cls.stage: cls for cls in (BuildMarker, ScoreMarker, BpoMarker)}
_OLD_NAMES = {"config_key": "key"}  # build markers before the typed markers


def parse_marker(stage: str, data: Any) -> Marker | None:
    """The typed marker of `stage` from its JSON, or None when it is torn, foreign or of an
    unknown shape (never raises: a marker that does not parse means "not done")."""
    if not isinstance(data, dict) or data.get("stage", stage) != stage:
        return None
    data = {_OLD_NAMES.get(k, k) if _OLD_NAMES.get(k) not in data else k: v
            for k, v in data.items() if k != "stage"}
    try:
        marker = from_json(MARKERS[stage], data)
    except TypeProblem:
        return None
    counts = [marker.rows, *marker.skipped.values()]
    return marker if min(counts) >= 0 else None  # a hand-edited count below zero: not done


def marker_bytes(marker: Marker) -> bytes:
    """One layout for every stage's marker: sorted keys, two-space indent."""
    return (json.dumps(marker.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def marker_path(directory: Path, stage: str, shard_name: str) -> Path:
    """Where `stage`'s marker for the shard named `shard_name` lives."""
    return Path(directory) / STATE_DIR / f"{_PREFIX[stage]}{shard_name}.json"


def read_json(path: Path) -> Any:
    """A state file's JSON, or None when it is missing, torn or not JSON (never raises)."""
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def read_marker(directory: Path, stage: str, shard_name: str) -> Marker | None:
    """The shard's marker of `stage`, or None when missing, torn or not a marker."""
    return parse_marker(stage, read_json(marker_path(directory, stage, shard_name)))


def record(directory: Path, marker: Marker, shard_name: str) -> None:
    """`marker.stage` (re)wrote the shard: write its marker, and drop the markers of the stages
    after it, which described bytes that are gone."""
    write_bytes_atomic(marker_path(directory, marker.stage, shard_name), marker_bytes(marker))
    for later in SHARD_STAGES[SHARD_STAGES.index(marker.stage) + 1 :]:
        marker_path(directory, later, shard_name).unlink(missing_ok=True)


def drop_markers(directory: Path, shard_name: str) -> None:
    """Remove every stage's marker of a shard that is gone."""
    for stage in SHARD_STAGES:
        marker_path(directory, stage, shard_name).unlink(missing_ok=True)


def is_complete(marker: Marker | None, key: str) -> bool:
    """A marker made under `key` (a foreign, partial or other-key one is not)."""
    return marker is not None and marker.key == key


def latest(directory: Path, shard_name: str) -> Marker | None:
    """The marker of the last stage that wrote the shard (score after build), if any."""
    for stage in reversed(SHARD_STAGES):
        marker = read_marker(directory, stage, shard_name)
        if marker is not None:
            return marker
    return None


def shard_sha256(directory: Path, shard_name: str) -> str | None:
    """THE manifest hash of a shard: the sha256 its latest writer recorded (None: no marker)."""
    marker = latest(directory, shard_name)
    return marker.sha256 if marker is not None else None


def vouched_sha256(directory: Path, shard_name: str) -> str | None:
    """The shard file's sha256 when its latest writer's marker records exactly those bytes,
    else None (a shard edited, restored or torn after its stage finished)."""
    path = Path(directory) / shard_name
    recorded = shard_sha256(directory, shard_name)
    if recorded is None or not path.is_file():
        return None
    current = sha256_file(path)
    return current if current == recorded else None


def unfinished_score(directory: Path, shard_name: str, digest: str) -> str | None:
    """When a shard's bytes (`digest`) differ from the manifest because a `score` rewrote it
    and has not updated the manifest yet (it is running, or was killed): the fix, in a
    sentence. None when no score marker vouches for these bytes (the shard was changed)."""
    marker = read_marker(directory, "score", shard_name)
    if marker is None or marker.sha256 != digest:
        return None
    return (f"{shard_name} was rewritten by a `mdpo-data score` that is still running or was "
            f"interrupted (manifest.json is updated when it finishes): wait for it, or re-run the "
            f"same `mdpo-data score {directory} --ref-model MODEL` to finish it")


def merge_skips(markers: Iterable[Marker]) -> dict[str, int]:
    """The stage's skips by reason over its markers (what the manifest reports)."""
    total: Counter = Counter()
    for marker in markers:
        total.update(marker.skipped)
    return dict(sorted(total.items()))


# --------------------------------------------------------------------------- BPO


def bpo_cache_path(state_dir: Path, kind: str, settings_key: str) -> Path:
    """BPO's answer cache for one strategy kind and settings key."""
    return Path(state_dir) / f"bpo-{kind}-{settings_key}.jsonl"


def bpo_marker_path(state_dir: Path, part: str) -> Path:
    """BPO's completion marker for one part of the sample (a split)."""
    return Path(state_dir) / f"bpo-{part}.json"


def read_bpo_marker(state_dir: Path, part: str, key: str) -> BpoMarker | None:
    """The BPO marker of `part` if it was written under `key`, else None."""
    marker = parse_marker("bpo", read_json(bpo_marker_path(state_dir, part)))
    return marker if is_complete(marker, key) else None


def write_bpo_marker(state_dir: Path, marker: BpoMarker) -> None:
    write_bytes_atomic(bpo_marker_path(state_dir, marker.part), marker_bytes(marker))
