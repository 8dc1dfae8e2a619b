"""The typed records that flow between stages: what a source yields, and why a row was dropped.

Sources yield `Candidate` (a text-only preference pair with a lazy `ImageRef`, so sampling
never holds images in memory) or `Skip` (a counted, named reason). Image bytes are read only
for the sampled rows, inside the worker processes.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import posixpath
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar


class BadRow(ValueError):
    """A row that cannot become an example; `reason` is the key counted in the manifest."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Skip:
    """A source row that was dropped, with the reason counted in the manifest."""

    reason: str  # short snake_case key, e.g. "non_numeric_rating"
    where: str  # e.g. "vlfeedback_80k.jsonl:1234"
    detail: str = ""
    # the source row it belongs to (counts file rows when a row yields several items)
    row: int | None = field(default=None, compare=False)


def resolve_under(root: str | Path, relpath: str) -> Path:
    """`root/relpath`, refusing paths that escape `root` (`../`, absolute paths, symlinks out)."""
    root_path = Path(root).resolve()
    if not relpath or Path(relpath).is_absolute() or "\x00" in relpath:
        raise BadRow("image_path_escapes_root", repr(relpath))
    target = (root_path / relpath).resolve()
    if target != root_path and root_path not in target.parents:
        raise BadRow("image_path_escapes_root", repr(relpath))
    return target


def lexically_under(relpath: str) -> bool:
    """True when `relpath` names something below its root by its text alone: relative, no NUL,
    and no `..` that climbs out once normalized. No file system call: planning checks every
    candidate row this way, and `resolve_under` (symlinks resolved) decides exactly at load."""
    if not relpath or "\x00" in relpath or relpath.startswith("/"):
        return False
    if ".." not in relpath:  # the common case, without normalizing
        return relpath.strip("./") != ""
    normal = posixpath.normpath(relpath)
    return normal != ".." and not normal.startswith("../") and normal != "."


def safe_member_name(name: str) -> bool:
    """True when a zip member name stays inside the folder it is extracted to."""
    parts = name.replace("\\", "/").split("/")
    return bool(name) and not name.startswith(("/", "\\")) and ".." not in parts and ":" not in parts[0]


@dataclass(frozen=True)
class ImageRef:
    """Where an example's image lives; `load()` returns its raw (undecoded) bytes.

    Picklable plain fields, so worker processes can resolve it. `kind` names an `ImageKind`
    in `IMAGE_KINDS`, which says how to load it:
      file    - `root`/`path`, never outside `root`
      zip     - member `path` of the archive `root` (member names that escape are refused)
      bytes   - embedded `data`
      parquet - column `path` of row `index` in parquet file `root`
      demo    - drawn by the demo source from (`index`, `data`=spec json)
    """

    kind: str
    root: str = ""
    path: str = ""
    index: int = 0
    data: bytes = b""

    @property
    def key(self) -> str:
        """Identity used to detect duplicate pairs and to keep swaps off the same image."""
        return image_kind(self.kind).key(self)

    def load(self, max_bytes: int = 256 * 1024 * 1024) -> bytes:
        return image_kind(self.kind).load(self, max_bytes)

    def identity(self) -> list[Any]:
        """What identifies the image's content without reading it (resume fingerprints)."""
        return image_kind(self.kind).identity(self)

    def id_hint(self) -> str | None:
        """An id for a row that has none (a file's name stem), or None."""
        return image_kind(self.kind).id_hint(self)


# --------------------------------------------------------------------------- image kinds


class ImageKind:
    """How to load one kind of `ImageRef`; subclasses set `name` and define `load`."""

    name: ClassVar[str]

    def key(self, ref: ImageRef) -> str:
        return f"{ref.kind}:{ref.root}:{ref.path}:{ref.index}"

    def load(self, ref: ImageRef, max_bytes: int) -> bytes:
        raise NotImplementedError

    def id_hint(self, ref: ImageRef) -> str | None:
        return None

    def stored_in(self, ref: ImageRef) -> Path:
        """The local file holding the image (an archive, a parquet file)."""
        return Path(ref.root)

    def identity(self, ref: ImageRef) -> list[Any]:
        """kind, name, and the size and mtime of the local file holding it."""
        try:
            stat = self.stored_in(ref).stat()
            return [ref.kind, ref.path, ref.index, stat.st_size, stat.st_mtime_ns]
        except OSError:
            return [ref.kind, ref.path, ref.index, "missing"]


class InlineImage(ImageKind):
    """A kind whose `data` holds the content (or its full recipe): identified by its hash."""

    def identity(self, ref: ImageRef) -> list[Any]:
        return [ref.kind, ref.path, ref.index, hashlib.sha256(ref.data).hexdigest()]


IMAGE_KINDS: dict[str, ImageKind] = {}
# Kinds registered by a module that records.py must not import (it imports records): the
# module registers its kind when first imported, e.g. in a worker process unpickling a ref.
LAZY_IMAGE_KINDS: dict[str, str] = {"demo": "mdpo_data.sources.demo"}


def register_image_kind(cls: type[ImageKind]) -> type[ImageKind]:
    IMAGE_KINDS[cls.name] = cls()
    return cls


def image_kind(name: str) -> ImageKind:
    """The registered kind `name` (importing its module if registered lazily)."""
    if name not in IMAGE_KINDS and name in LAZY_IMAGE_KINDS:
        importlib.import_module(LAZY_IMAGE_KINDS[name])
    if name not in IMAGE_KINDS:
        known = ", ".join(sorted({*IMAGE_KINDS, *LAZY_IMAGE_KINDS}))
        raise ValueError(f"unknown ImageRef kind {name!r}; known kinds: {known}")
    return IMAGE_KINDS[name]


@register_image_kind
class BytesImage(InlineImage):
    name = "bytes"

    def key(self, ref: ImageRef) -> str:
        return "sha256:" + hashlib.sha256(ref.data).hexdigest()

    def load(self, ref: ImageRef, max_bytes: int) -> bytes:
        return ref.data


@register_image_kind
class FileImage(ImageKind):
    name = "file"

    def stored_in(self, ref: ImageRef) -> Path:
        return Path(ref.root) / ref.path

    def id_hint(self, ref: ImageRef) -> str | None:
        return PurePosixPath(ref.path).stem

    def load(self, ref: ImageRef, max_bytes: int) -> bytes:
        target = resolve_under(ref.root, ref.path)
        if not target.is_file():
            raise BadRow("image_missing", str(target))
        if target.stat().st_size > max_bytes:
            raise BadRow("image_too_large", f"{target} is over {max_bytes} bytes")
        return target.read_bytes()


@register_image_kind
class ZipImage(ImageKind):
    name = "zip"

    def load(self, ref: ImageRef, max_bytes: int) -> bytes:
        if not safe_member_name(ref.path):
            raise BadRow("zip_member_escapes_target", repr(ref.path))
        archive = _open_zip(ref.root)
        try:
            info = archive.getinfo(ref.path)
        except KeyError:
            raise BadRow("image_missing", f"{ref.path} not in {ref.root}") from None
        if info.file_size > max_bytes:
            raise BadRow("image_too_large", f"{ref.path} is over {max_bytes} bytes")
        try:
            return archive.read(info)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise BadRow("image_corrupt", f"{ref.path} in {ref.root}: {error}") from None


@register_image_kind
class ParquetImage(ImageKind):
    name = "parquet"

    def load(self, ref: ImageRef, max_bytes: int) -> bytes:
        table = _parquet_row(ref.root, ref.index, ref.path)
        cell = table.column(ref.path)[0].as_py()
        if isinstance(cell, list):  # TRL's `images` column: a list holding one image
            if len(cell) != 1:
                raise BadRow("not_one_image", f"{ref.root} row {ref.index} has {len(cell)} images")
            cell = cell[0]
        if cell is None:
            raise BadRow("image_missing", f"{ref.root} row {ref.index}")
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise BadRow("image_missing", f"{ref.root} row {ref.index} has no bytes")
        return data


_ZIPS: dict[tuple[str, int], zipfile.ZipFile] = {}


def _open_zip(path: str) -> zipfile.ZipFile:
    """One open archive per (file, process): re-reading an 80K-member central directory for
    every image costs ~0.4 s; the pid in the key keeps forked workers off a shared handle."""
    key = (path, os.getpid())
    if key not in _ZIPS:
        _ZIPS[key] = zipfile.ZipFile(path)
    return _ZIPS[key]


_GROUP_CACHE: dict[tuple[str, str], tuple[int, int, Any]] = {}


def _parquet_row(path: str, index: int, column: str):
    """One row of one column of a parquet file, reading (and caching) only its row group.

    Sampled rows arrive roughly in file order within a worker, so caching the last row
    group turns N row reads into about one read per group.
    """
    import pyarrow.parquet as pq

    cached = _GROUP_CACHE.get((path, column))
    if cached and cached[0] <= index < cached[1]:
        return cached[2].slice(index - cached[0], 1)
    pf = pq.ParquetFile(path)
    offset = 0
    for group in range(pf.num_row_groups):
        n = pf.metadata.row_group(group).num_rows
        if index < offset + n:
            table = pf.read_row_group(group, columns=[column])
            _GROUP_CACHE.clear()
            _GROUP_CACHE[(path, column)] = (offset, offset + n, table)
            return table.slice(index - offset, 1)
        offset += n
    raise BadRow("image_missing", f"{path} has no row {index}")


@dataclass(frozen=True)
class Candidate:
    """A preference pair as a source sees it, before sampling; images stay lazy.

    `rejected` is None for gold-answer sources (LLaVA-Instruct): a rejected response must
    then be bootstrapped. `pair` tags which responses of the row were paired ("2>0"), so
    (`source`, `row`, `pair`) is unique even where the source's own ids repeat.
    """

    source: str
    row: int
    source_id: str
    image: ImageRef
    question: str
    chosen: str
    rejected: str | None
    pair: str = "0"
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    system: str | None = None  # the source's own system prompt; `--system-prompt` may replace it

    @property
    def example_id(self) -> str:
        return f"{self.source}-{self.row:08d}-{self.pair}"

    @property
    def dedup_key(self) -> tuple[str, str, str, str | None]:
        return (self.image.key, self.question, self.chosen, self.rejected)
