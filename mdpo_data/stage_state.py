"""Completion markers of the pipeline's stages, one place for where they live and how they
are read and written (datatrove's pattern: a small JSON file per stage and shard, written
atomically after the shard; a torn or missing one means "not done").

    build  DIR/.state/<shard>.json         config key, rows key, rows, sha256, skips by reason
    score  DIR/.state/score-<shard>.json   fingerprint key, no-image flag, rows, sha256, skips
    bpo    DIR/.state/bpo-<kind>-<key>.jsonl   generated answers (an append-only cache, not a
                                               per-shard marker: BPO runs before shards exist)

Stages read each other's markers only through this module: the build's resume check accepts
a shard the score stage rewrote when the score marker vouches for its bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mdpo_data.folder import STATE_DIR
from mdpo_data.shards import write_bytes_atomic

_PREFIX = {"build": "", "score": "score-"}


def marker_path(directory: Path, stage: str, shard_name: str) -> Path:
    """Where `stage`'s marker for the shard named `shard_name` lives."""
    return Path(directory) / STATE_DIR / f"{_PREFIX[stage]}{shard_name}.json"


def read_json(path: Path) -> Any:
    """A state file's JSON, or None when it is missing, torn or not JSON (never raises)."""
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def read_marker(directory: Path, stage: str, shard_name: str) -> dict[str, Any] | None:
    """The marker as a dict, or None when missing, torn or not an object."""
    marker = read_json(marker_path(directory, stage, shard_name))
    return marker if isinstance(marker, dict) else None


def write_marker(directory: Path, stage: str, shard_name: str, marker: dict[str, Any]) -> None:
    """Write a marker atomically (each stage keeps the byte layout it always had)."""
    text = json.dumps(marker, indent=2) + "\n" if stage == "score" else json.dumps(marker)
    write_bytes_atomic(marker_path(directory, stage, shard_name), text.encode())


def drop_markers(directory: Path, shard_name: str) -> None:
    """Remove every stage's marker of a shard that is gone."""
    for stage in _PREFIX:
        marker_path(directory, stage, shard_name).unlink(missing_ok=True)


def bpo_cache_path(state_dir: Path, kind: str, settings_key: str) -> Path:
    """BPO's answer cache for one strategy kind and settings key."""
    return Path(state_dir) / f"bpo-{kind}-{settings_key}.jsonl"
