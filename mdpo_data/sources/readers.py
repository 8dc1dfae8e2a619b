"""Reading raw source files as numbered records; resolving image paths; shared text clean-up.

Every source reads json arrays, JSON lines or parquet; doing it in one place gives every
source the same row numbering (`row`: 0-based position in the whole stream, malformed
records included, so it is stable across runs) and the same `where` strings
("file:line" for JSON lines, 1-based; "file:row" for arrays and parquet, 0-based).
Parquet is read in batches of the text columns only: embedded images stay on disk and are
referenced by (file, row) through `ImageRef(kind="parquet")`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mdpo_data.sources.records import BadRow, ImageRef, Skip, lexically_under
from mdpo_data.sources import SourceError

DATA_SUFFIXES = (".json", ".jsonl", ".parquet")
# Metadata files that live beside data files in Hub snapshots and save_to_disk folders.
_NOT_DATA = {"dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json"}


@dataclass(frozen=True)
class Record:
    """One raw record; `data` is None when it could not be parsed (`reason` says why)."""

    row: int  # 0-based position in the whole stream
    where: str  # "file:line" / "file:row", for Skips and error messages
    file: Path
    index: int  # 0-based position inside `file` (the parquet row for ImageRef)
    data: dict[str, Any] | None
    reason: str = ""  # Skip reason when data is None
    detail: str = ""
    span: tuple[int, int] | None = None  # JSON lines: (byte offset, length), to re-read it

    @property
    def location(self) -> tuple:
        """What `record_at` needs to read this record again (without its data)."""
        return (self.row, self.where, self.file, self.index, self.span)

    def skip(self) -> Skip:
        return Skip(self.reason, self.where, self.detail, self.row)


def primed(items: Iterator[Any]) -> Iterator[Any]:
    """Produce the first item now, so file-level errors (a broken JSON array, an unreadable
    parquet file) raise when the source is opened rather than midway through a build."""
    try:
        first = next(items)
    except StopIteration:
        return iter(())
    return itertools.chain([first], items)


def data_files(path: Path, suffixes: Iterable[str] = DATA_SUFFIXES) -> list[Path]:
    """The data files of a file or folder, in a stable order. Hidden folders are skipped, and
    so are folders this project wrote (a build or export folder: its manifest.json is not
    data), so a build whose --out lies inside --source-path never reads its own output."""
    from mdpo_data.format.folder import is_ours

    suffixes = tuple(suffixes)
    if path.is_file():
        return [path]
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and not is_ours(Path(dirpath) / d))
        for name in sorted(filenames):
            if name.endswith(suffixes) and name not in _NOT_DATA and not name.startswith("."):
                found.append(Path(dirpath) / name)
    return sorted(found)


def columns_of(file: Path, sample: int = 50) -> dict[str, Any]:
    """Column name -> pyarrow type (parquet) or None (json: union of the first records' keys)."""
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(file)
        except (OSError, ValueError) as error:  # ArrowInvalid is a ValueError
            raise SourceError(f"cannot read parquet file {file}: {error}") from None
        return {name: schema.field(name).type for name in schema.names}
    keys: dict[str, Any] = {}
    for record in iter_records([file], file.parent):
        if record.data is not None:
            keys.update(dict.fromkeys(record.data))
            sample -= 1
            if sample == 0:
                break
    return keys


def iter_records(
    files: list[Path], root: Path, skip_columns: Iterable[str] = (), first_row: int = 0
) -> Iterator[Record]:
    """Records of `files` in order; `skip_columns` (parquet) are not read (embedded images)."""
    row = first_row
    for file in files:
        name = _display_name(file, root)
        if file.suffix == ".parquet":
            records = _parquet_records(file, name, set(skip_columns))
        elif _starts_with_bracket(file):
            records = _array_records(file, name)
        else:
            records = _jsonl_records(file, name)
        for index, where, data, reason, detail, span in records:
            yield Record(row, where, file, index, data, reason, detail, span)
            row += 1


def records_at(locations: Iterable[tuple], skip_columns: Iterable[str] = ()) -> Iterator[Record]:
    """The records at `Record.location`s, read again: a JSON line by its byte span, a parquet
    row by its row group; planning keeps locations, not data, for rows it may sample."""
    arrays: dict[Path, list] = {}
    groups: dict[Path, tuple[int, int, Any]] = {}  # the last row group read, per file
    for row, where, file, index, span in locations:
        if span is not None:
            with open(file, "rb") as handle:
                handle.seek(span[0])
                raw = handle.read(span[1])
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                data, reason, detail = None, *_not_utf8(error)
            else:
                _, _, data, reason, detail, _ = _parse_line(line, index, where)
        elif file.suffix == ".parquet":
            data, reason, detail = _parquet_row_data(file, index, set(skip_columns), groups), "", ""
        else:
            if file not in arrays:
                arrays[file] = list(_array_records(file, file.name))
            data, reason, detail = arrays[file][index][2:5]
        yield Record(row, where, file, index, data, reason, detail, span)


def _parquet_row_data(file: Path, index: int, skip_columns: set[str], groups: dict) -> dict:
    import pyarrow.parquet as pq

    start, stop, table = groups.get(file, (0, 0, None))
    if start <= index < stop:
        return table.slice(index - start, 1).to_pylist()[0]
    parquet = pq.ParquetFile(file)
    wanted = [c for c in parquet.schema_arrow.names if c not in skip_columns]
    offset = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if index < offset + rows:
            table = parquet.read_row_group(group, columns=wanted)
            groups[file] = (offset, offset + rows, table)
            return table.slice(index - offset, 1).to_pylist()[0]
        offset += rows
    raise SourceError(f"{file} has no row {index} (was it changed during the build?)")


def _display_name(file: Path, root: Path) -> str:
    try:
        return file.relative_to(root).as_posix() if root != file else file.name
    except ValueError:
        return file.name


def _not_utf8(error: UnicodeDecodeError) -> tuple[str, str]:
    """The skip of a record whose bytes are not UTF-8: never decoded with U+FFFD (the stored
    text would silently differ from the source's)."""
    return "invalid_utf8", f"byte {error.start} of the record is not UTF-8 ({error.reason})"


def _starts_with_bracket(file: Path) -> bool:
    """A `.json` file may hold one array or (commonly, despite the name) JSON lines."""
    with open(file, "rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _jsonl_records(file: Path, name: str):
    """Numbered lines as text mode reads them (a lone \\r ends a line too), with byte spans.

    Text mode decodes in large chunks (a `bytes.decode` per line cost 0.2 s more on an 800 MB
    file; `newline=""` another 0.2 s, so lone \\r are split here); `surrogateescape` keeps every
    byte recoverable, so a span is exact: an ASCII line's length is its byte length, others
    are encoded back (and decoded again as `errors="replace"` does)."""
    with open(file, encoding="utf-8", errors="surrogateescape", newline="\n") as handle:
        index, lineno, offset = 0, 0, 0
        for text in handle:
            for line in _LONE_CR.split(text) if "\r" in text else (text,):
                if not line:  # after a \r that ends the file
                    continue
                lineno += 1
                problem = None
                if line.isascii():
                    size = len(line)
                else:
                    raw = line.encode("utf-8", "surrogateescape")
                    size = len(raw)
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as error:
                        problem = _not_utf8(error)
                    if lineno == 1:
                        line = line.removeprefix("\ufeff")  # a BOM: the first row is kept
                span, offset = (offset, size), offset + size
                if line.isspace():  # blank (strip() would copy the line)
                    continue
                if problem:
                    yield index, f"{name}:{lineno}", None, *problem, span
                else:
                    yield _parse_line(line, index, f"{name}:{lineno}", span)
                index += 1


_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


def _parse_line(line: str, index: int, where: str, span: tuple[int, int] | None = None):
    try:
        data = json.loads(line.removeprefix("\ufeff"))
    except json.JSONDecodeError as error:
        return index, where, None, "malformed_json", f"{error.msg} (column {error.colno})", span
    except RecursionError:
        return index, where, None, "malformed_json", "nested too deeply", span
    if "\\ud" in line or "\\uD" in line:  # an escaped lone surrogate is no text either
        problem = _lone_surrogate(data)
        if problem:
            return index, where, None, *problem, span
    return index, where, *_as_dict(data), span


def _lone_surrogate(data: Any) -> tuple[str, str] | None:
    """("invalid_utf8", detail) when a decoded record holds a lone surrogate (no UTF-8 form:
    Arrow could not store it), else None."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        return "invalid_utf8", f"a lone surrogate {error.object[error.start]!a} is not text"
    except (RecursionError, ValueError):
        return "malformed_json", "nested too deeply"
    return None


def _array_records(file: Path, name: str):
    """Records of a JSON array. Bytes that are not UTF-8 are kept as lone surrogates while
    parsing so that only the records holding them are skipped (invalid_utf8); a BOM is allowed."""
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
        suspect = "\\ud" in text or "\\uD" in text  # an escaped surrogate: check each record
    except UnicodeDecodeError:
        text, suspect = raw.decode("utf-8-sig", "surrogateescape"), True
    del raw
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SourceError(
            f"{file} is not a valid JSON array ({error}); fix the file, or convert it to JSON "
            "lines (one object per line) so that bad rows are skipped and counted"
        ) from None
    except RecursionError:
        raise SourceError(f"{file}: JSON nested too deeply to read; convert it to JSON lines (one "
                          "object per line) so that such rows are skipped and counted") from None
    if not isinstance(data, list):
        raise SourceError(
            f"{file} holds a JSON {type(data).__name__}, expected an array of records"
        )
    del text
    for index, item in enumerate(data):
        problem = _lone_surrogate(item) if suspect else None
        if problem:
            yield index, f"{name}:{index}", None, *problem, None
        else:
            yield index, f"{name}:{index}", *_as_dict(item), None


def _as_dict(data: Any) -> tuple[dict[str, Any] | None, str, str]:
    if isinstance(data, dict):
        return data, "", ""
    return None, "malformed_record", f"expected a JSON object, got {type(data).__name__}"


def _parquet_records(file: Path, name: str, skip_columns: set[str]):
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(file).names
        index = 0
        for batch in _parquet_batches(file, [c for c in names if c not in skip_columns]):
            for data, problem in batch:
                yield index, f"{name}:{index}", data, *(problem or ("", "")), None
                index += 1
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise SourceError(f"cannot read parquet file {file}: {error}") from None


def _parquet_batches(file: Path, columns: list[str]) -> Iterator[list[dict[str, Any]]]:
    """Rows of `columns` as dicts, 512 at a time: the projection means other columns (image
    bytes) are never read. pyarrow, not polars: a plan of a 10K-prompt VLFeedback parquet
    took 1.2-1.34x the time and 1.22-1.27x the peak memory with polars' scan_parquet (same
    projection) + to_dicts (benchmarks/bench_plan.py --parquet)."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(file).iter_batches(batch_size=512, columns=columns):
        try:
            yield [(row, None) for row in batch.to_pylist()]
        except UnicodeDecodeError:  # a string cell that is not UTF-8: find it, row by row
            yield [_parquet_row_or_problem(batch, i) for i in range(batch.num_rows)]


def _parquet_row_or_problem(batch, i: int) -> tuple[dict | None, tuple[str, str] | None]:
    try:
        return batch.slice(i, 1).to_pylist()[0], None
    except UnicodeDecodeError as error:
        return None, _not_utf8(error)


def is_embedded_image_type(arrow_type: Any) -> str | None:
    """'struct' / 'binary' / 'list' when a parquet column holds image bytes, else None."""
    import pyarrow as pa

    if arrow_type is None:
        return None
    if pa.types.is_struct(arrow_type) and arrow_type.get_field_index("bytes") >= 0:
        return "struct"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "binary"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        if is_embedded_image_type(arrow_type.value_type):
            return "list"
    return None


def as_records(value: Any) -> Any:
    """A list of dicts from either Arrow form of a sequence of structs.

    `datasets` stores `Sequence({...})` (VLFeedback's `completions`) as a struct of lists,
    which reads back as a dict of equal-length lists; `List({...})` reads back as a list of
    dicts. Anything else is returned unchanged.
    """
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        if len(lengths) != 1:
            raise BadRow(
                "malformed_record", f"struct of lists with unequal lengths {sorted(lengths)}"
            )
        count = lengths.pop()
        return [{key: items[i] for key, items in value.items()} for i in range(count)]
    return value


def file_ref(root: Path, relpath: str) -> ImageRef:
    """An image file under `root`; raises BadRow for escaping or missing paths.

    Tries `relpath` then its bare file name (data sets often write `images/<name>` or
    `coco/train2017/<name>` while users point `root` at the folder of images itself). An
    escaping path is refused before any fallback, so `../x.jpg` never resolves to `x.jpg`.
    Called for every candidate row while planning, so the escape check here is lexical and the
    existence check one stat; the exact check (symlinks resolved, `resolve_under`) runs when a
    sampled row's image is loaded.
    """
    relpath = relpath.replace("\\", "/")
    while relpath.startswith("./"):
        relpath = relpath[2:]
    if not lexically_under(relpath):
        raise BadRow("image_path_escapes_root", repr(relpath))
    if os.path.isfile(os.path.join(root, relpath)):
        return ImageRef("file", root=str(root), path=relpath)
    base = PurePosixPath(relpath).name
    if base != relpath and base and os.path.isfile(os.path.join(root, base)):
        return ImageRef("file", root=str(root), path=base)
    raise BadRow("image_missing", f"{relpath} not under {root}")


IMAGE_TAG = "<image>"


def strip_image_tag(text: str) -> str:
    """Remove LLaVA's `<image>` placeholder (prefix "<image>\\n..." or suffix "...\\n<image>").

    Left in, the tag would be read as a second image token by the model's processor.
    """
    text = text.strip()
    if text.startswith(IMAGE_TAG):
        text = text[len(IMAGE_TAG) :]
    if text.endswith(IMAGE_TAG):
        text = text[: -len(IMAGE_TAG)]
    return text.replace(IMAGE_TAG, "").strip()
