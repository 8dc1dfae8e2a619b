"""Any pairwise (image, question, chosen, rejected) data set: local files or a Hub snapshot.

Each file's layout is detected from its columns (or given with a column map):
  mdpo     the mDPO authors' json: img_path, prompt (chat template baked in), chosen, rejected
  trl      TRL vision preference rows: images|image, prompt, chosen, rejected (messages or text)
  rlaif-v  RLAIF-V: image (embedded), question, chosen, rejected, idx
  ha-dpo   HA-DPO: image_id|image, question, chosen, reject
  povid    POVID: image, conversations, rejected_conversations (LLaVA turns)
  mapped   --columns image=COL,question=COL,chosen=COL[,rejected=COL][,id=COL]
A missing rejected answer gives `rejected=None` (bootstrapped later). Images given as
paths resolve under --image-root (default: the data file's folder), never outside it;
embedded parquet images stay on disk as `ImageRef(kind="parquet")`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mdpo_data.sources.records import BadRow, Candidate, ImageRef, Skip
from mdpo_data.sources import SourceError
from mdpo_data.sources.hub import local_or_hub
from mdpo_data.sources.readers import (
    DATA_SUFFIXES,
    Record,
    as_records,
    columns_of,
    data_files,
    file_ref,
    is_embedded_image_type,
    iter_records,
    primed,
    strip_image_tag,
)

NAME = "pairs"
HUB_PATTERNS = ["*.json", "*.jsonl", "*.parquet", "README.md"]
COLUMN_KEYS = ("image", "question", "chosen", "rejected", "id")
COLUMNS_SYNTAX = "--columns image=COL,question=COL,chosen=COL[,rejected=COL][,id=COL]"
_USER, _ASSISTANT = ("user", "human"), ("assistant", "gpt")
# "A chat between ... USER: <image>\n{question} ASSISTANT:" (LLaVA-1.5 / mDPO template)
_TEMPLATE = re.compile(r"^(?:(?P<system>.*?)\s)?USER:\s*(?P<question>.*?)\s*ASSISTANT:\s*$", re.S)


@dataclass(frozen=True)
class Layout:
    """Which column holds what; `id` may be None (then the image stem or the row)."""

    name: str
    image: str
    question: str
    chosen: str
    rejected: str | None
    id: str | None = None


def _pick(columns: set[str], *names: str) -> str | None:
    return next((n for n in names if n in columns), None)


def detect_layout(columns: set[str]) -> Layout | None:
    """The known layout these column names belong to, or None."""
    if {"img_path", "prompt", "chosen", "rejected"} <= columns:
        return Layout("mdpo", "img_path", "prompt", "chosen", "rejected", _pick(columns, "id"))
    if {"image", "conversations", "rejected_conversations"} <= columns:
        return Layout(
            "povid",
            "image",
            "conversations",
            "conversations",
            "rejected_conversations",
            _pick(columns, "id"),
        )
    image = _pick(columns, "images", "image")
    if image and {"prompt", "chosen", "rejected"} <= columns:
        return Layout("trl", image, "prompt", "chosen", "rejected", _pick(columns, "id", "idx"))
    if image and {"question", "chosen", "rejected"} <= columns:
        return Layout(
            "rlaif-v", image, "question", "chosen", "rejected", _pick(columns, "idx", "id")
        )
    image = _pick(columns, "image", "image_path", "image_id")
    if image and {"question", "chosen", "reject"} <= columns:
        return Layout(
            "ha-dpo", image, "question", "chosen", "reject", _pick(columns, "id", "image_id")
        )
    return None


def mapped_layout(columns: dict[str, str], found: set[str], file: Path) -> Layout:
    unknown = sorted(set(columns) - set(COLUMN_KEYS))
    if unknown:
        raise SourceError(
            f"pairs: unknown --columns key(s) {', '.join(unknown)}; use {COLUMNS_SYNTAX}"
        )
    needed = [k for k in ("image", "question", "chosen") if k not in columns]
    if needed:
        raise SourceError(f"pairs: --columns must map {', '.join(needed)}; use {COLUMNS_SYNTAX}")
    absent = sorted(f"{k}={v}" for k, v in columns.items() if v not in found)
    if absent:
        raise SourceError(
            f"pairs: --columns {', '.join(absent)}: no such column in {file.name} "
            f"(columns found: {', '.join(sorted(found))})"
        )
    return Layout(
        "mapped",
        columns["image"],
        columns["question"],
        columns["chosen"],
        columns.get("rejected"),
        columns.get("id"),
    )


# ---------------------------------------------------------------- values


def message_text(value: Any, roles: tuple[str, ...]) -> str | None:
    """Text of a plain string, or of the first message with one of `roles` (TRL or LLaVA turns)."""
    if value is None or isinstance(value, str):
        return value
    value = as_records(value)  # messages stored by `datasets` as a struct of lists
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise BadRow("malformed_record", f"expected text or messages, got {type(value).__name__}")
    for message in value:
        if not isinstance(message, dict):
            continue
        role = message.get("role", message.get("from"))
        if role not in roles:
            continue
        content = as_records(message.get("content", message.get("value")))
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(
                b.get("text") or ""
                for b in content
                if isinstance(b, dict) and b.get("type") == "text"
            )
    return None


def clean_question(text: str) -> str:
    """The bare question: chat template (`... USER: <image>\\n{q} ASSISTANT:`) and tags removed."""
    match = _TEMPLATE.match(text.strip())
    return strip_image_tag(match.group("question") if match else text)


def system_of(value: Any) -> str | None:
    """The system prompt a prompt cell carries: a system message, or the text before `USER:`
    in a baked-in LLaVA/Vicuna template (the mDPO json); None if it has none."""
    if isinstance(value, str):
        match = _TEMPLATE.match(value.strip())
        return (match.group("system") or "").strip() or None if match else None
    return (message_text(value, ("system",)) or "").strip() or None


class _ImagePaths:
    """Resolves image paths under a root, escape-checked (see readers.file_ref)."""

    def __init__(self, root: Path, add_suffix: bool = False):
        self.root, self.add_suffix = root, add_suffix

    def ref(self, path: Any) -> ImageRef:
        path = str(path).strip()
        if self.add_suffix and not PurePosixPath(path).suffix:
            path += ".jpg"  # HA-DPO gives a bare Visual Genome image id
        if not path:
            raise BadRow("missing_field", "image")
        return file_ref(self.root, path)


def image_ref(value: Any, paths: _ImagePaths) -> ImageRef:
    """ImageRef for an image cell read from json or parquet: path, struct, bytes, or a 1-list."""
    if isinstance(value, list):
        if len(value) != 1:
            raise BadRow("not_one_image", f"{len(value)} images")
        value = value[0]
    if isinstance(value, dict):
        if value.get("bytes"):
            return ImageRef("bytes", data=bytes(value["bytes"]))
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)) and value:
        return ImageRef("bytes", data=bytes(value))
    if value is None or value == "":
        raise BadRow("missing_field", "image")
    return paths.ref(value)


# ---------------------------------------------------------------- files


@dataclass
class _File:
    path: Path
    layout: Layout
    embedded: bool  # image column is a parquet struct/binary: referenced, never read
    paths: _ImagePaths


def _plan(
    path: str | None, image_root: str | None, columns: dict[str, str] | None
) -> tuple[Path, list[_File]]:
    base = local_or_hub(path, default_repo=None, allow_patterns=HUB_PATTERNS, source=NAME)
    files = data_files(base, DATA_SUFFIXES)
    if not files:
        raise SourceError(f"pairs: no .json, .jsonl or .parquet files under {base}")
    if image_root is not None and not Path(image_root).expanduser().is_dir():
        raise SourceError(f"pairs: --image-root {image_root!r} is not a folder")
    root = base if base.is_dir() else base.parent
    planned = []
    for file in files:
        found = columns_of(file)
        layout = mapped_layout(columns, set(found), file) if columns else detect_layout(set(found))
        if layout is None:
            raise SourceError(
                f"pairs: cannot tell the layout of {file} "
                f"(columns found: {', '.join(sorted(found)) or 'none'}). Known layouts: "
                "mdpo (img_path, prompt, chosen, rejected), trl (images|image, prompt, "
                "chosen, rejected), rlaif-v (image, question, chosen, rejected), ha-dpo (image_id, "
                "question, chosen, reject), povid (image, conversations, rejected_conversations). "
                f"Map other columns with {COLUMNS_SYNTAX}"
            )
        embedded = is_embedded_image_type(found.get(layout.image)) in ("struct", "binary")
        image_dir = Path(image_root).expanduser().resolve() if image_root else file.parent.resolve()
        paths = _ImagePaths(image_dir, add_suffix=layout.image == "image_id")
        planned.append(_File(file, layout, embedded, paths))
    if image_root is None:
        _check_first_image(planned[0], root)
    return root, planned


def _check_first_image(file: _File, root: Path) -> None:
    """Without --image-root, paths resolve beside the data file: fail fast if they don't."""
    if file.embedded:
        return
    for record in iter_records([file.path], root):
        if record.data is None or record.data.get(file.layout.image) is None:
            continue
        try:
            image_ref(record.data[file.layout.image], file.paths)
        except BadRow as error:
            if error.reason == "image_missing":
                raise SourceError(
                    f"pairs: image of {record.where} ({error.detail}) was not found beside the "
                    "data file; pass --image-root with the folder that holds the images"
                ) from None
        return


def stream(
    *, path: str | None, image_root: str | None, columns: dict[str, str] | None
) -> Iterator[Candidate | Skip]:
    root, planned = _plan(path, image_root, columns)
    return primed(_candidates(root, planned))


def _candidates(root: Path, planned: list[_File]) -> Iterator[Candidate | Skip]:
    row = 0
    for file in planned:
        skip = [file.layout.image] if file.embedded else []
        for record in iter_records([file.path], root, skip_columns=skip, first_row=row):
            row = record.row + 1
            if record.data is None:
                yield record.skip()
                continue
            try:
                yield _candidate(record, file)
            except BadRow as error:
                yield Skip(error.reason, record.where, error.detail)


def _candidate(record: Record, file: _File) -> Candidate:
    data, layout = record.data or {}, file.layout
    question = message_text(data.get(layout.question), _USER)
    system = system_of(data.get(layout.question))
    chosen = message_text(data.get(layout.chosen), _ASSISTANT)
    rejected = message_text(data.get(layout.rejected), _ASSISTANT) if layout.rejected else None
    if question is None:
        raise BadRow("missing_field", layout.question)
    question = clean_question(question)
    if not question:
        raise BadRow("empty_question", "")
    chosen = (chosen or "").strip()
    if not chosen:
        raise BadRow("empty_response", layout.chosen)
    rejected = (rejected or "").strip() or None
    if rejected == chosen:
        raise BadRow("identical_responses", "")
    if file.embedded:
        image = ImageRef("parquet", root=str(file.path), path=layout.image, index=record.index)
    else:
        image = image_ref(data.get(layout.image), file.paths)
    if layout.id and data.get(layout.id) not in (None, ""):
        source_id = str(data[layout.id])
    else:
        hint = image.id_hint()
        source_id = hint if hint is not None else str(record.row)
    meta = {"layout": layout.name}
    meta.update({k: data[k] for k in ("ds_name", "origin_dataset") if isinstance(data.get(k), str)})
    return Candidate(NAME, record.row, source_id, image, question, chosen, rejected, "0", meta, system)
