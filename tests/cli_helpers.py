"""Helpers the CLI tests share: run `mdpo-data` in a subprocess, read back what a build wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mdpo_data.format.shards import read_shard, sha256_file, shard_files

CLI = [sys.executable, "-m", "mdpo_data.cli"]


def run_cli(*args, check=True, env=None):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def folder_bytes(directory: Path) -> dict[str, str]:
    """sha256 of every published file (shards + manifest + card), ignoring resume state."""
    return {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def rows_of(out):
    return [row for f in shard_files(out, "train") for row in read_shard(f).to_pylist()]


def manifest_json(directory) -> dict:
    """manifest.json exactly as stored (tests read and edit the on-disk format; the code reads
    it through `mdpo_data.format.manifest.load_manifest`)."""
    import json

    return json.loads((Path(directory) / "manifest.json").read_bytes())
