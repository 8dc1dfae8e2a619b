"""BPO's answer cache: an append-only JSONL per settings key in the build's state folder, and
the cheap checkpoint identity that goes into that key."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CACHE_VERSION = 1  # bump when the cache line format or what a line means changes



# --------------------------------------------------------------------------- cache


class AnswerCache:
    """Append-only JSONL of generated answers for ONE settings key; torn last line tolerated."""

    def __init__(self, path: Path, ident: dict[str, str]):
        self.path = path
        self.ident = ident  # strategy, model, settings: every line must carry the same values

    def load(self) -> dict[str, dict[str, Any]]:
        """example id -> latest matching line; a partial last line is cut off the file."""
        found: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return found
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # killed mid-write: drop the fragment so appends start clean
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for raw in data[:end].splitlines():
            try:
                line = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if (isinstance(line, dict) and all(line.get(k) == v for k, v in self.ident.items())
                    and isinstance(line.get("text"), str) and isinstance(line.get("finished"), bool)):
                found[str(line.get("id"))] = line
        return found

    def append(self, lines: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = "".join(json.dumps({**self.ident, **line}, ensure_ascii=False) + "\n" for line in lines)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())


def sha(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def model_identity(model_id_or_path: str, revision: str | None) -> str:
    """Cheap identity of a checkpoint: id@revision for the Hub; for a folder, a hash of its
    small config files and its weight files' names and sizes (not their 14 GB of bytes)."""
    from mdpo_data.models import resolve_model

    path = Path(resolve_model(model_id_or_path)) if model_id_or_path else None
    if path is None or not path.is_dir():
        return f"{model_id_or_path}@{revision or 'default'}"
    parts = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        name = file.relative_to(path).as_posix()
        small = file.suffix in (".json", ".jinja", ".txt", ".model") and file.stat().st_size < 50_000_000
        digest = hashlib.sha256(file.read_bytes()).hexdigest() if small else file.stat().st_size
        parts.append(f"{name}:{digest}")
    return "sha256:" + sha(*parts)
