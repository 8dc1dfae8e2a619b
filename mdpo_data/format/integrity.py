"""Verify before use: a data folder's shards are exactly the bytes its manifest lists.

`verify_shards` streams every listed shard through sha256 (1 MiB blocks, constant memory),
compares it with the manifest, and only then opens it with Arrow to count its rows: flipped
or truncated bytes are refused by the hash and never reach a parser. A listed shard that is
missing, or a shard file the manifest does not list, is refused too. A Hub export is checked
the same way: its manifest.json lists every `data/*.parquet` file's sha256 and rows (written by
`export_files` when the export is made), and no parquet is parsed before its hash matched.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from mdpo_data.format import schema
from mdpo_data.format.manifest import ExportFile, Manifest, ShardEntry
from mdpo_data.format.markers import unfinished_score
from mdpo_data.format.shards import SHARD_RE, sha256_file


class IntegrityError(ValueError):
    """A shard does not match the manifest; the message names it."""


def data_fingerprint(manifest: Manifest) -> str:
    """sha256 over the listed shards' (split, file, rows, sha256): the data's identity."""
    listed = [[split, e.file, e.rows, e.sha256] for split, e in manifest.entries()]
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()


def stream_rows(path: Path) -> int:
    """Rows of an Arrow stream shard, reading batch by batch (memory-mapped)."""
    with pa.memory_map(str(path)) as source:
        return sum(batch.num_rows for batch in pa.ipc.open_stream(source))


def verify_entry(directory: str | Path, entry: ShardEntry, *, also: str | None = None) -> str:
    """THE shard check: the sha256 of the file a manifest entry names, after it matched the
    entry's (or `also`, bytes a score marker vouches for). IntegrityError naming the file and
    the fix otherwise. Every reader calls this before it parses a shard."""
    path = Path(directory) / entry.file
    if not path.is_file():
        raise IntegrityError(f"{path}: listed in manifest.json but missing (deleted or moved)")
    try:
        digest = sha256_file(path)
    except OSError as error:
        raise IntegrityError(f"{path}: cannot be read ({error.strerror or error})") from None
    if digest == entry.sha256 or (also is not None and digest == also):
        return digest
    raise IntegrityError(unfinished_score(Path(directory), entry.file, digest) or (
        f"{path}: sha256 does not match manifest.json ({digest[:12]}..., listed {entry.sha256[:12]}...): "
        "the shard changed after it was built or scored; rebuild or restore it"))


def verified_shards(directory: str | Path, manifest: Manifest, split: str):
    """Yield the listed shards of `split` one by one, each after its sha256 matched the
    manifest (IntegrityError naming it otherwise): readers parse only bytes we wrote."""
    directory = Path(directory)
    for _, entry in manifest.entries(split):
        verify_entry(directory, entry)
        yield directory / entry.file


def verify_shards(directory: str | Path, manifest: Manifest) -> dict[str, Any]:
    """Check every listed shard's sha256 (first) and row count; raise IntegrityError naming
    the first shard that differs. Returns {"shards", "rows", "bytes", "seconds"}."""
    directory = Path(directory)
    start = time.perf_counter()
    entries = manifest.entries()
    on_disk = sorted(p.name for p in directory.iterdir() if SHARD_RE.match(p.name))
    if not on_disk and (directory / "data").is_dir():
        return _verify_export(directory, manifest, start)
    unlisted = sorted(set(on_disk) - {e.file for _, e in entries})
    if unlisted:
        raise IntegrityError(f"{directory / unlisted[0]} is not listed in manifest.json: the folder "
                             "holds shards of another build; rebuild it or remove the file")
    rows = nbytes = 0
    for _split, entry in entries:
        path = directory / entry.file
        verify_entry(directory, entry)
        try:
            n = stream_rows(path)
        except (pa.ArrowException, OSError) as error:
            raise IntegrityError(f"{path}: not a readable Arrow shard ({error})") from None
        if n != entry.rows:
            raise IntegrityError(f"{path}: {n} rows, manifest.json says {entry.rows}")
        rows += n
        nbytes += path.stat().st_size
    return {"shards": len(entries), "rows": rows, "bytes": nbytes,
            "seconds": round(time.perf_counter() - start, 3)}


def _verify_export(directory: Path, manifest: Manifest, start: float) -> dict[str, Any]:
    problems = export_problems(directory, manifest)
    if problems:
        raise IntegrityError(problems[0])
    listed = manifest.export or []
    return {"shards": len(listed), "rows": sum(e.rows for e in listed),
            "bytes": sum((directory / e.file).stat().st_size for e in listed),
            "seconds": round(time.perf_counter() - start, 3), "export": True}


# A trained run's weights: what `mdpo-train` lists when it saves them, and what a reader
# (`mdpo-eval pope --adapter`) checks before it loads any of them.
WEIGHTS_FILE = "weights.sha256.json"
WEIGHT_NAME = re.compile(r"^(adapter_config\.json|adapter_model\.safetensors|config\.json|"
                         r"model(-\d{5}-of-\d{5})?\.safetensors|.+\.safetensors\.index\.json)$")


def file_hashes(folder: str | Path, owned: Callable[[str], bool]) -> dict[str, str]:
    """{name: sha256} of the regular files in `folder` whose name `owned` accepts: what a
    listing written last in a folder (checkpoints, trained weights) records."""
    return {p.name: sha256_file(p) for p in sorted(Path(folder).iterdir())
            if owned(p.name) and p.is_file() and not p.is_symlink()}


def listing_problems(folder: str | Path, files: dict[str, str], listing: str,
                     owned: Callable[[str], bool], hint: str = "") -> list[str]:
    """Every way `folder` differs from a `listing` of its files (one line each, `hint` appended):
    a listed file missing or changed, or an `owned` file added. A listed name that is not an
    entry of the folder (a path out of it) is "missing", never read."""
    folder = Path(folder)
    present = {p.name for p in folder.iterdir() if owned(p.name)}
    problems = []
    for name, digest in sorted(files.items()):
        path = folder / name
        if name not in present:
            problems.append(f"{path}: listed in {listing} but missing{hint}")
        elif not path.is_file() or path.is_symlink() or sha256_file(path) != digest:
            problems.append(f"{path}: sha256 does not match {listing} (changed after the save){hint}")
    for name in sorted(present - set(files)):
        problems.append(f"{folder / name}: not listed in {listing} (added after the save){hint}")
    return problems


def weights_listing(folder: str | Path) -> bytes:
    """WEIGHTS_FILE's bytes for the weight and config files in `folder` (sha256 each)."""
    files = file_hashes(folder, lambda name: bool(WEIGHT_NAME.match(name)))
    return (json.dumps({"files": files}, indent=2, sort_keys=True) + "\n").encode()


def weights_problems(folder: str | Path) -> list[str]:
    """Why the weights in a run folder must not be loaded (one line each; [] when they may):
    pickled weights (never loaded), and, when the run listed them (`WEIGHTS_FILE`), any listed
    file missing or changed, or a weight file added after the run."""
    folder = Path(folder)
    pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if pickled:
        return [f"{folder / pickled[0]}: pickled weights are never loaded (they can run code); "
                "save the adapter as safetensors"]
    listing = folder / WEIGHTS_FILE
    if not listing.exists():
        return []  # an adapter not made by mdpo-train (or by an older one): nothing to compare
    try:
        files = dict(json.loads(listing.read_bytes())["files"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        return [f"{listing} is damaged ({error}); re-save the run or remove the file"]
    foreign = sorted(str(name) for name in files if not WEIGHT_NAME.match(str(name)))
    if foreign:  # only the run's own weight files are listed (never a path out of it)
        return [f"{listing} is damaged (it lists {foreign[0]!r}, not a weight file of the run); "
                "re-save the run or remove the file"]
    return listing_problems(folder, files, WEIGHTS_FILE, lambda name: bool(WEIGHT_NAME.match(name)))


def export_files(folder: str | Path) -> list[ExportFile]:
    """The `export` list of an export's manifest: each data/*.parquet file's split, rows and
    sha256 (rows from the parquet footer of the file just written)."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    entries = []
    for split in schema.SPLITS:
        for file in sorted((folder / "data").glob(f"{split}-*.parquet")):
            entries.append(ExportFile(file=f"data/{file.name}", split=split,
                                      rows=pq.ParquetFile(file).metadata.num_rows, sha256=sha256_file(file)))
    return entries


def export_problems(directory: str | Path, manifest: Manifest) -> list[str]:
    """Every way a Hub export differs from its manifest (one line each): files listed but
    missing, changed (sha256, checked before the file is parsed) or unlisted, and row counts
    that differ from the file's footer or from the build's split totals."""
    import pyarrow.parquet as pq

    directory = Path(directory)
    listed = manifest.export
    if not listed:
        return [f"{directory}/manifest.json lists no export files (an export made by an older "
                "mdpo-data, or not an export): its parquet bytes cannot be checked; re-export "
                "the build with `mdpo-data push --dry-run`"]
    problems = []
    names = {e.file for e in listed}
    for file in sorted((directory / "data").iterdir()):
        if f"data/{file.name}" not in names:
            problems.append(f"{file}: not listed in manifest.json's export files (added after the "
                            "export); remove it or re-export")
    rows_by_split: dict[str, int] = {}
    for entry in listed:
        path = directory / entry.file
        if not path.is_file():
            problems.append(f"{path}: listed in manifest.json but missing (deleted or moved)")
            continue
        if sha256_file(path) != entry.sha256:
            problems.append(f"{path}: sha256 does not match manifest.json (changed after the "
                            "export); re-export the build or restore the file")
            continue
        try:
            n = pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError) as error:
            problems.append(f"{path}: not a readable parquet file ({' '.join(str(error).split())[:200]})")
            continue
        if n != entry.rows:
            problems.append(f"{path}: {n} rows, manifest.json says {entry.rows}")
        rows_by_split[entry.split] = rows_by_split.get(entry.split, 0) + n
    expected = {split: sum(e.rows for e in entries) for split, entries in manifest.splits.items() if entries}
    if not problems and rows_by_split != expected:
        problems.append(f"{directory}/data: rows per split {rows_by_split} differ from the "
                        f"build's {expected} in manifest.json")
    return problems
