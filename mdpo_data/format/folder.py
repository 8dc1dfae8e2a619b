"""Output folders: whose they are, whether we may write there, and who is writing now.

ONE ownership rule for every command that writes (build, score, card, preview, push
--dry-run, mdpo-train, mdpo-eval). A folder is OURS when it holds our mark, and each kind of folder has
one list of the names we write there (`KINDS`):

    data folder     our manifest.json (format_version + splits) or .state/build.json|lock
    Hub export      our manifest.json next to a data/ folder (what `push --dry-run` writes)
    train output    .mdpo-train.json (written first by mdpo-train)
    eval output     .mdpo-eval.json (written first by mdpo-eval pope / demo-pope)
    preview         preview.png/.html that carry our generator mark

A non-empty folder that is not ours, or is ours of another kind, is refused. Bookkeeping
paths (.state/ and its entries, checkpoints/, metrics.jsonl, ...) are never followed when they
are symlinks: the command refuses with one line. `--overwrite` unlinks only names of its kind's
list, one file at a time, never a tree. One writer at a time: `hold(DIR)` takes
DIR/.state/lock (filelock); a second writer gets "DIR is in use by pid N". Every check runs
before anything is created.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mdpo_data.format.manifest import MANIFEST_NAME, Manifest
from mdpo_data.format.shards import SHARD_RE, write_bytes_atomic

STATE_DIR = ".state"
LOCK_NAME = "lock"
PID_NAME = "lock.pid"
WRITTEN_NAME = "written.json"  # .state/written.json: sha256 of the user-facing files we wrote
TRAIN_MARK = ".mdpo-train.json"
EVAL_MARK = ".mdpo-eval.json"
_HELD: dict[Path, int] = {}  # folders this process holds (re-entrant: build -> score)


class FolderError(ValueError):
    """The target folder cannot be used; one line says why."""


@dataclass(frozen=True)
class Kind:
    """One kind of folder we write: the names that are ours in it."""

    name: str
    files: tuple[str, ...]  # plain files we write at the top level
    patterns: tuple[re.Pattern, ...] = ()  # more top-level file names we write
    folders: tuple[str, ...] = ()  # bookkeeping folders (never followed when symlinks)
    bookkeeping: tuple[str, ...] = ()  # files we read back or append to (never followed)
    mark: str = ""  # the file `claim` writes first (folders that carry no manifest)

    def owns(self, name: str) -> bool:
        return name in self.files or name in self.folders or any(p.match(name) for p in self.patterns)


DATA = Kind("mdpo-data build", files=(MANIFEST_NAME, "README.md", "preview.png", "preview.html"),
            patterns=(SHARD_RE,), folders=(STATE_DIR,), bookkeeping=(MANIFEST_NAME,))
EXPORT = Kind("mdpo-data export", files=("README.md", MANIFEST_NAME), folders=("data",))
TRAIN = Kind("mdpo-train output", files=(
    TRAIN_MARK, "train_config.yaml", "metrics.jsonl", "curves.png", "README.md", "adapter_config.json",
    "adapter_model.safetensors", "model.safetensors", "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
    "weights.sha256.json"),
    patterns=(re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$"), re.compile(r"^.*\.safetensors\.index\.json$")),
    folders=("checkpoints", "merged", "logs"),
    bookkeeping=(TRAIN_MARK, "train_config.yaml", "metrics.jsonl"), mark=TRAIN_MARK)
EVAL = Kind("mdpo-eval output", files=(EVAL_MARK, "answers.jsonl", "metrics.json"),
            patterns=(re.compile(r"^demo_pope_[a-z]+\.json$"),), folders=("images",),
            bookkeeping=(EVAL_MARK,), mark=EVAL_MARK)
PREVIEW = Kind("mdpo-data preview", files=("preview.png", "preview.html"))
KINDS = (DATA, EXPORT, TRAIN, EVAL, PREVIEW)
PREVIEW_MARK = "mdpo-data preview"  # PNG Software text / HTML generator meta of our previews
EXPORT_SHARD_RE = re.compile(r"^[a-z]+-\d{5}-of-\d{5}\.parquet$")  # data/<split>-i-of-n.parquet


def has_our_manifest(directory: Path) -> bool:
    path = Path(directory) / MANIFEST_NAME
    if path.is_symlink():
        return False
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "format_version" in data and "splits" in data


def _real_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def is_our_preview(path: Path) -> bool:
    """A preview.png/.html that we wrote (it carries PREVIEW_MARK near its start)."""
    if not _real_file(path):
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return PREVIEW_MARK.encode() in head


def kind_of(directory: str | Path) -> Kind | None:
    """Which kind of our folders `directory` is (None: not ours)."""
    directory = Path(directory)
    for kind in (TRAIN, EVAL):
        mark = directory / kind.mark
        if mark.is_file() or mark.is_symlink():  # a linked mark: refuse_links names it
            return kind
    if has_our_manifest(directory):
        return EXPORT if (directory / "data").is_dir() and not (directory / STATE_DIR).exists() else DATA
    state = directory / STATE_DIR
    if (state / "build.json").is_file() or (state / LOCK_NAME).is_file():
        return DATA
    if any(is_our_preview(directory / name) for name in PREVIEW.files):
        return PREVIEW
    return None


def is_ours(directory: str | Path) -> bool:
    return kind_of(directory) is not None


def refuse_links(directory: str | Path, kind: Kind = DATA) -> None:
    """One-line refusal when a name of ours in `kind` (listed or matching its patterns, or an
    entry of its bookkeeping folders, two levels down) is a symlink: we never read, write or
    delete through one."""
    directory = Path(directory)
    paths = [directory / name for name in (*kind.files, *kind.bookkeeping, *kind.folders)]
    if kind.patterns and _real_dir(directory):
        paths += [p for p in directory.iterdir() if any(r.match(p.name) for r in kind.patterns)]
    for folder in kind.folders:
        root = directory / folder
        if _real_dir(root):
            for entry in root.iterdir():
                paths.append(entry)
                if _real_dir(entry):
                    paths += list(entry.iterdir())
    for path in paths:
        if path.is_symlink():
            raise FolderError(f"{path} is a symlink; mdpo-data never follows links in its own "
                              "bookkeeping: remove the link (or pick another folder)")


def no_links_between(root: str | Path, path: str | Path) -> Path:
    """`path` (under `root`) when no component from root down to it is a symlink, else one line."""
    root, path = Path(root), Path(path)
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            raise FolderError(f"{current} is a symlink; mdpo-data never writes through links in its "
                              "own folders: remove the link")
    return path


def write_owned(root: str | Path, path: str | Path, data: bytes) -> Path:
    """Atomically write `path` under `root`, refusing a symlink anywhere on the way."""
    write_bytes_atomic(no_links_between(root, path), data)
    return Path(path)


def open_owned(root: str | Path, path: str | Path, mode: str = "a"):
    """Open a log of ours for writing without following a symlink (O_NOFOLLOW, and no link on
    the way from `root`): "a" appends, "w" truncates."""
    no_links_between(root, path)
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    flags |= os.O_APPEND if mode == "a" else os.O_TRUNC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as error:
        raise FolderError(f"{path}: cannot open it for writing ({error.strerror or error}); "
                          "mdpo-data never follows a symlink there") from None
    return os.fdopen(fd, mode, encoding="utf-8")


def check_target(directory: str | Path, what: str = "--out", kind: Kind = DATA) -> Path:
    """Refuse a target we must not write into; nothing is created. Returns the path."""
    if not str(directory).strip():  # an unset variable: never "the working folder"
        raise FolderError(f"{what} is empty: give a folder")
    directory = Path(directory)
    if directory.exists() or directory.is_symlink():
        if not directory.is_dir():
            raise FolderError(f"{what} {directory} exists and is not a folder")
        found = kind_of(directory)
        names = sorted(p.name for p in directory.iterdir())
        if names and found is None:
            shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
            raise FolderError(
                f"{what} {directory} is not empty (it holds {shown}) and holds no {kind.name} of "
                f"ours (it is not an {kind.name} folder); refusing to touch it: pick an empty or new folder")
        if found is not None and found is not kind and not (kind is PREVIEW and found is DATA):
            raise FolderError(f"{what} {directory} holds an {found.name}, not an {kind.name}: "
                              "pick an empty or new folder")
        refuse_links(directory, kind)
        _refuse_odd_state(directory, kind, what)
        data = directory / "data"
        if kind is DATA and data.is_dir() and any(EXPORT_SHARD_RE.match(p.name) for p in data.iterdir()):
            raise FolderError(f"{what} {directory} holds a Hub export's data/*.parquet, which "
                              "load_dataset would read instead of the new shards: pick another folder")
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


def claim(directory: str | Path, kind: Kind) -> Path:
    """Create a folder of a marked kind (train, eval) and mark it ours, the mark first; run
    `check_target` before. Returns the folder."""
    directory = Path(directory)
    refuse_links(directory, kind)
    directory.mkdir(parents=True, exist_ok=True)
    if not _real_file(directory / kind.mark):
        tag = kind.name.split()[0]  # "mdpo-train", "mdpo-eval"
        write_owned(directory, directory / kind.mark, json.dumps({"kind": tag}).encode())
    return directory


def _refuse_odd_state(directory: Path, kind: Kind, what: str) -> None:
    """A folder (or anything not a file) where we keep a state file: writing it would fail
    half-way through the work, so say so before any."""
    state = directory / STATE_DIR
    if kind is not DATA or not _real_dir(state):
        return
    for entry in sorted(state.iterdir()):
        if _STATE_ENTRY.match(entry.name) and not entry.is_symlink() and not entry.is_file():
            raise FolderError(f"{what} {directory}: {entry} is not a file, where mdpo-data keeps one "
                              "of its state files; remove it (or pick another folder)")


def create(directory: str | Path, what: str = "--out") -> Path:
    """mkdir -p with a one-line error (e.g. under /proc, on a read-only mount)."""
    directory = Path(directory)
    refuse_links(directory, DATA)
    try:
        (directory / STATE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FolderError(f"{what} {directory}: cannot create it ({error.strerror or error})") from None
    return directory


# ------------------------------------------------------------------ files the user may edit


def _written(directory: Path) -> dict:
    path = directory / STATE_DIR / WRITTEN_NAME
    if path.is_symlink():
        return {}
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def record_written(directory: str | Path, name: str, data: bytes) -> None:
    """Remember the sha256 of a user-facing file we wrote (README.md), so a later hand edit
    is recognised and kept."""
    directory = Path(directory)
    record = {**_written(directory), name: hashlib.sha256(data).hexdigest()}
    write_owned(directory, directory / STATE_DIR / WRITTEN_NAME,
                json.dumps(record, sort_keys=True).encode())


def user_edited(directory: str | Path, name: str) -> bool:
    """True when DIR/name exists and is not byte for byte what we last wrote (a hand edit,
    a user's own file, or one written before we kept records)."""
    directory = Path(directory)
    path = directory / name
    if not path.exists() and not path.is_symlink():
        return False
    if not _real_file(path):
        return True
    recorded = _written(directory).get(name)
    return recorded != hashlib.sha256(path.read_bytes()).hexdigest()


def write_user_file(directory: str | Path, name: str, data: bytes) -> Path:
    """Write a user-facing file and record its hash."""
    directory = Path(directory)
    path = write_owned(directory, directory / name, data)
    record_written(directory, name, data)
    return path


# ------------------------------------------------------------------ --overwrite


def owned_files(directory: Path, manifest: Manifest | None) -> list[Path]:
    """Shards our manifest (checked: shard names inside the folder) or our state markers list
    (regular files only)."""
    names = {entry.file for _, entry in manifest.entries()} if manifest else set()
    state = directory / STATE_DIR
    if _real_dir(state):
        names |= {p.name[: -len(".json")] for p in state.glob("*.arrow.json")
                  if SHARD_RE.match(p.name[: -len(".json")])}
    return [directory / name for name in sorted(names) if _real_file(directory / name)]


_STATE_ENTRY = re.compile(r"^(build\.json|written\.json|(score-)?[a-z]+-\d{5}-of-\d{5}\.arrow\.json|"
                          r"bpo-[A-Za-z0-9_.-]+\.jsonl?|\..+\.tmp)$")


def clear_data_folder(directory: Path, manifest: Manifest | None) -> list[str]:
    """`build --overwrite`: unlink, one file at a time, the shards our manifest and markers
    list, our manifest, our README.md if unedited, and the .state/ entries we write. Returns
    the names left in place (a user's files, an edited README); never removes a tree."""
    refuse_links(directory, DATA)
    for path in owned_files(directory, manifest):
        path.unlink()
    if has_our_manifest(directory):
        (directory / MANIFEST_NAME).unlink()
    if not user_edited(directory, "README.md") and (directory / "README.md").exists():
        (directory / "README.md").unlink()
    for name in ("preview.png", "preview.html"):
        if is_our_preview(directory / name):
            (directory / name).unlink()
    state = directory / STATE_DIR
    left = []
    for entry in sorted(state.iterdir()) if _real_dir(state) else []:
        if entry.name in (LOCK_NAME, PID_NAME):
            continue
        if _STATE_ENTRY.match(entry.name) and _real_file(entry):
            entry.unlink()
        else:
            left.append(f"{STATE_DIR}/{entry.name}")
    left += [entry.name for entry in sorted(directory.iterdir())
             if entry.name != STATE_DIR]
    return left


# ------------------------------------------------------------------ one writer at a time


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
    lock_path = no_links_between(directory, directory / STATE_DIR / LOCK_NAME)
    pid_file = no_links_between(directory, directory / STATE_DIR / PID_NAME)
    lock = filelock.FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        try:
            pid = pid_file.read_text().strip() or "?" if not pid_file.is_symlink() else "?"
        except OSError:
            pid = "?"
        raise FolderError(f"{directory} is in use by pid {pid} (another mdpo-data command is "
                          "writing it); wait for it to finish or use another folder") from None
    _HELD[key] = 1
    try:
        write_owned(directory, pid_file, f"{os.getpid()}\n".encode())
        yield directory
    finally:
        del _HELD[key]
        if not pid_file.is_symlink():
            pid_file.unlink(missing_ok=True)
        lock.release()
