"""Shard I/O: Arrow IPC stream files that `datasets` loads directly, written atomically.

A shard is `DIR/{split}-{i:05d}-of-{n:05d}.arrow` (the `save_to_disk` naming), in the Arrow
stream format `datasets.Dataset.from_file` memory-maps, with the contract's schema (and its
`huggingface` features metadata) from `mdpo_data.format.schema`. A shard is written to a temp file
in the same folder and renamed, so a reader never sees half a shard.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from mdpo_data.format import schema

SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.arrow$")


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.arrow"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def umask_mode(mode: int = 0o666) -> int:
    """`mode` less the process umask: what `open`/`mkdir` would give (0644/0755 under 022)."""
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path beside `path`; on success fsync and rename it into place.

    mkstemp creates the temp file 0600; it gets the umask's mode (like a plain `open`) before
    the rename, so a shared dataset is readable by the team the umask allows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_shard(path: str | Path, batches: Iterable[list[dict[str, Any]] | pa.Table]) -> int:
    """Stream row batches (storage-form dicts or tables) into one shard; return its row count.

    Memory stays bounded by one batch. Output bytes depend only on the rows and the batch
    boundaries, so the same input gives byte-identical shards.
    """
    target_schema = schema.arrow_schema()
    rows = 0
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, target_schema) as writer:
            for batch in batches:
                table = batch if isinstance(batch, pa.Table) else schema.rows_to_table(batch)
                if table.num_rows == 0:
                    continue
                if not table.schema.equals(target_schema):
                    table = table.select(list(target_schema.names)).cast(target_schema)
                writer.write_table(table)
                rows += table.num_rows
    return rows


def read_shard(path: str | Path) -> pa.Table:
    """A whole shard as an Arrow table (memory-mapped, zero-copy)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def shard_files(directory: str | Path, split: str) -> list[Path]:
    """The shard files of one split, in order; empty when the split was not written."""
    directory = Path(directory)
    found = []
    for entry in directory.iterdir() if directory.is_dir() else []:
        match = SHARD_RE.match(entry.name)
        if match and match["split"] == split:
            found.append(entry)
    return sorted(found)


def load_split(directory: str | Path, split: str = "train"):
    """One split of a build folder as a `datasets.Dataset` with the contract's features."""
    import datasets

    files = shard_files(directory, split)
    if not files:
        raise FileNotFoundError(f"no {split} shards in {directory}")
    parts = [datasets.Dataset.from_file(str(f)) for f in files]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def open_dataset(path: str | Path):
    """A `datasets.DatasetDict` from a build folder (Arrow shards) or a Hub export (parquet).

    The trainer and the card/preview/validate commands read data only through here, so a
    folder exported for the Hub (`data/{split}-*.parquet`) is accepted wherever a build is.
    """
    import datasets

    path = Path(path)
    if shard_files(path, "train"):
        return datasets.DatasetDict(
            {split: load_split(path, split) for split in schema.SPLITS if shard_files(path, split)}
        )
    parquet = sorted((path / "data").glob("*.parquet")) if (path / "data").is_dir() else []
    if parquet:
        data_files: dict[str, list[str]] = {}
        for file in parquet:
            split = file.name.split("-", 1)[0]
            data_files.setdefault(split, []).append(str(file))
        return datasets.load_dataset("parquet", data_files=data_files, features=schema.FEATURES)
    raise FileNotFoundError(
        f"{path} holds neither mdpo-data shards (train-*.arrow) nor a Hub export (data/*.parquet)"
    )
