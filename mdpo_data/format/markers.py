"""Completion markers of the pipeline's stages: where they live, how they are read and written,
and how the manifest's counts and hashes are derived from them (datatrove's pattern: a small
JSON file per stage and unit of work, written atomically after the work; a torn or missing
one means "not done").

Every marker records the same core: "stage", the stage's key (what made the work: build
"config_key", score and bpo "key"), "rows", "sha256" (of the shard, or for BPO of its
answers) and "skipped" (reason -> count), plus what the stage itself needs to resume (markers
of older versions, without "stage", are read the same way):

    build  DIR/.state/<shard>.json          + rows_key (the candidate rows), image_stats
    score  DIR/.state/score-<shard>.json    + no_image_logps, method, shard, split
    bpo    DIR/.state/bpo-<split>.json      + settings_key, unanswered (id -> [reason, image sha256])
           DIR/.state/bpo-<kind>-<key>.jsonl  BPO's answer cache (append-only; not a marker)

Manifest numbers are merges of markers (`merge_skips`), so a resumed stage reports exactly
what an uninterrupted one does; a shard's manifest hash is the one its latest writer recorded
(`shard_sha256`): score rewrites build's shards, and `record` drops a later stage's marker
whenever an earlier stage rewrites the shard. Stages read each other's state only here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mdpo_data.format.folder import STATE_DIR
from mdpo_data.format.shards import sha256_file, write_bytes_atomic

SHARD_STAGES = ("build", "score")  # the stages that write a shard, in the order they run
_PREFIX = {"build": "", "score": "score-"}
KEY_FIELD = {"build": "config_key", "score": "key", "bpo": "key"}


def marker_path(directory: Path, stage: str, shard_name: str) -> Path:
    """Where `stage`'s marker for the shard named `shard_name` lives."""
    return Path(directory) / STATE_DIR / f"{_PREFIX[stage]}{shard_name}.json"


def read_json(path: Path) -> Any:
    """A state file's JSON, or None when it is missing, torn or not JSON (never raises)."""
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def _read_object(path: Path) -> dict[str, Any] | None:
    data = read_json(path)
    return data if isinstance(data, dict) else None


def read_marker(directory: Path, stage: str, shard_name: str) -> dict[str, Any] | None:
    """The marker as a dict, or None when missing, torn or not an object."""
    return _read_object(marker_path(directory, stage, shard_name))


def write_marker(directory: Path, stage: str, shard_name: str, marker: dict[str, Any]) -> None:
    """Write a marker atomically (each stage keeps the byte layout it always had)."""
    text = json.dumps(marker, indent=2) + "\n" if stage == "score" else json.dumps(marker)
    write_bytes_atomic(marker_path(directory, stage, shard_name), text.encode())


def record(directory: Path, stage: str, shard_name: str, marker: dict[str, Any]) -> None:
    """`stage` (re)wrote the shard: write its marker, and drop the markers of the stages after
    it, which described bytes that are gone."""
    write_marker(directory, stage, shard_name, marker)
    for later in SHARD_STAGES[SHARD_STAGES.index(stage) + 1 :]:
        marker_path(directory, later, shard_name).unlink(missing_ok=True)


def drop_markers(directory: Path, shard_name: str) -> None:
    """Remove every stage's marker of a shard that is gone."""
    for stage in SHARD_STAGES:
        marker_path(directory, stage, shard_name).unlink(missing_ok=True)


def is_complete(marker: Any, stage: str, key: str) -> bool:
    """A well-formed marker of `stage` made under `key` (a foreign or partial one is not)."""
    return (
        isinstance(marker, dict)
        and marker.get(KEY_FIELD[stage]) == key
        and isinstance(marker.get("rows"), int)
        and isinstance(marker.get("skipped"), dict)
        and all(isinstance(n, int) for n in marker["skipped"].values())
    )


def latest(directory: Path, shard_name: str) -> dict[str, Any] | None:
    """The marker of the last stage that wrote the shard (score after build), if any."""
    for stage in reversed(SHARD_STAGES):
        marker = read_marker(directory, stage, shard_name)
        if marker is not None:
            return marker
    return None


def shard_sha256(directory: Path, shard_name: str) -> str | None:
    """THE manifest hash of a shard: the sha256 its latest writer recorded (None: no marker)."""
    marker = latest(directory, shard_name)
    return marker.get("sha256") if marker is not None else None


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
    if not marker or marker.get("sha256") != digest:
        return None
    return (f"{shard_name} was rewritten by a `mdpo-data score` that is still running or was "
            f"interrupted (manifest.json is updated when it finishes): wait for it, or re-run the "
            f"same `mdpo-data score {directory} --ref-model MODEL` to finish it")


def merge_skips(markers: Iterable[dict[str, Any]]) -> dict[str, int]:
    """The stage's skips by reason over its markers (what the manifest reports)."""
    total: Counter = Counter()
    for marker in markers:
        total.update(marker.get("skipped") or {})
    return dict(sorted(total.items()))


# --------------------------------------------------------------------------- BPO


def bpo_cache_path(state_dir: Path, kind: str, settings_key: str) -> Path:
    """BPO's answer cache for one strategy kind and settings key."""
    return Path(state_dir) / f"bpo-{kind}-{settings_key}.jsonl"


def bpo_marker_path(state_dir: Path, part: str) -> Path:
    """BPO's completion marker for one part of the sample (a split)."""
    return Path(state_dir) / f"bpo-{part}.json"


def read_bpo_marker(state_dir: Path, part: str, key: str) -> dict[str, Any] | None:
    """The BPO marker of `part` if it was written under `key`, else None."""
    marker = _read_object(bpo_marker_path(state_dir, part))
    return marker if is_complete(marker, "bpo", key) else None


def write_bpo_marker(state_dir: Path, part: str, marker: dict[str, Any]) -> None:
    write_bytes_atomic(bpo_marker_path(state_dir, part), json.dumps(marker, sort_keys=True).encode())
