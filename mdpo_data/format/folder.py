"""Output folders: whose they are, whether we may write there, and who is writing now.

A folder is OURS only when it holds our manifest (a JSON object with `format_version` and
`splits`) or our state dir (`.state/build.json` or `.state/lock`). Commands that write (build, score, push
--dry-run) refuse any other non-empty folder, and `--overwrite` removes only what our
manifest and state list. One writer at a time: `hold(DIR)` takes DIR/.state/lock (filelock);
a second writer gets "DIR is in use by pid N". Every check runs before anything is created.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from mdpo_data.format.manifest import MANIFEST_NAME
from mdpo_data.format.shards import SHARD_RE

STATE_DIR = ".state"
LOCK_NAME = "lock"
PID_NAME = "lock.pid"
_HELD: dict[Path, int] = {}  # folders this process holds (re-entrant: build -> score)


class FolderError(ValueError):
    """The target folder cannot be used; one line says why."""


def has_our_manifest(directory: Path) -> bool:
    try:
        data = json.loads((directory / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "format_version" in data and "splits" in data


def is_ours(directory: str | Path) -> bool:
    directory = Path(directory)
    state = directory / STATE_DIR
    return has_our_manifest(directory) or (state / "build.json").is_file() or (state / LOCK_NAME).is_file()


def check_target(directory: str | Path, what: str = "--out") -> Path:
    """Refuse a target we must not write into; nothing is created. Returns the path."""
    directory = Path(directory)
    if directory.exists() or directory.is_symlink():
        if not directory.is_dir():
            raise FolderError(f"{what} {directory} exists and is not a folder")
        if any(directory.iterdir()) and not is_ours(directory):
            raise FolderError(
                f"{what} {directory} is not empty and holds no mdpo-data build (no manifest.json "
                "or .state/ of ours); refusing to touch it: pick an empty or new folder")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise FolderError(f"{what} {directory} is not writable")
        return directory
    parent = directory.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise FolderError(f"{what} {directory}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FolderError(f"{what} {directory}: cannot create it, {parent} is not writable")
    return directory


def create(directory: str | Path, what: str = "--out") -> Path:
    """mkdir -p with a one-line error (e.g. under /proc, on a read-only mount)."""
    directory = Path(directory)
    try:
        (directory / STATE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FolderError(f"{what} {directory}: cannot create it ({error.strerror or error})") from None
    return directory


def owned_files(directory: Path, manifest: dict | None) -> list[Path]:
    """What `--overwrite` may delete: shards our manifest or our state markers list."""
    names = set()
    for entries in ((manifest or {}).get("splits") or {}).values():
        for entry in entries if isinstance(entries, list) else []:
            name = entry.get("file") if isinstance(entry, dict) else None
            if isinstance(name, str) and SHARD_RE.match(name) and Path(name).name == name:
                names.add(name)
    state = directory / STATE_DIR
    if state.is_dir():
        names |= {p.name[: -len(".json")] for p in state.glob("*.arrow.json")
                  if SHARD_RE.match(p.name[: -len(".json")])}
    return [directory / name for name in sorted(names) if (directory / name).is_file()]


@contextmanager
def hold(directory: str | Path):
    """Hold DIR's writer lock while the block runs (re-entrant within this process)."""
    import filelock

    directory = create(directory)
    key = directory.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield directory
        finally:
            _HELD[key] -= 1
        return
    lock = filelock.FileLock(str(directory / STATE_DIR / LOCK_NAME), timeout=0)
    pid_file = directory / STATE_DIR / PID_NAME
    try:
        lock.acquire()
    except filelock.Timeout:
        try:
            pid = pid_file.read_text().strip() or "?"
        except OSError:
            pid = "?"
        raise FolderError(f"{directory} is in use by pid {pid} (another mdpo-data command is "
                          "writing it); wait for it to finish or use another folder") from None
    _HELD[key] = 1
    try:
        pid_file.write_text(f"{os.getpid()}\n")
        yield directory
    finally:
        del _HELD[key]
        pid_file.unlink(missing_ok=True)
        lock.release()
