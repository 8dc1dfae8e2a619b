"""BPO's answer cache: an append-only JSONL per settings key in the build's state folder (the
cheap checkpoint identity in that key is `models.checkpoint_identity(..., cheap=True)`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CACHE_VERSION = 2  # 2: weaken noises at the processor's own resize (ModelInput). Bump when the cache line format or what a line means changes


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
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
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
