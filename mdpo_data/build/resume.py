"""Content check of a shard a resumed build is about to reuse.

A shard's resume key identifies an image file by its size and mtime (cheap: no file is read
while planning, and a fresh build hashes nothing). That misses a same-size edit that kept the
old mtime, so before a finished shard is reused, the images of ITS rows are read again and
compared with the bytes the shard stores: equal hashes in the common case (the build stores a
JPEG/PNG's original bytes), else the stored bytes are re-derived from the source exactly as
the worker did. Images held inline (`bytes`, `demo`) are identified by content already.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

from mdpo_data.build import images
from mdpo_data.build.worker import Task
from mdpo_data.format.shards import read_shard
from mdpo_data.sources.records import BadRow, InlineImage, image_kind


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _same_image(ref, stored: bytes | None, max_pixels: int) -> bool:
    """Does the source image `ref` still give the bytes the shard stores for it?"""
    if ref is None or isinstance(image_kind(ref.kind), InlineImage):
        return True
    try:
        data = ref.load()
    except BadRow:
        return False  # gone or unreadable now: re-make the shard (which will count the skip)
    if stored is not None and _sha(data) == _sha(stored):
        return True
    try:
        image, fmt = images.load_image(data, max_pixels=max_pixels)
    except BadRow:
        return False
    return stored is not None and images.stored_bytes(data, image, fmt) == stored


def images_unchanged(path: Path, tasks: list[Task]) -> bool:
    """True when every written row's chosen image (and swap partner: the rejected image of a
    `swap` build) still gives the bytes `path` stores. Rows the build skipped are not checked."""
    if all(isinstance(image_kind(t.candidate.image.kind), InlineImage)
           and (t.partner is None or isinstance(image_kind(t.partner.kind), InlineImage)) for t in tasks):
        return True
    try:
        table = read_shard(path).select(["example_id", "images", "rejected_images"])
    except (pa.ArrowException, OSError, KeyError):
        return False
    stored = {row["example_id"]: row for row in table.to_pylist()}
    for task in tasks:
        row = stored.get(task.candidate.example_id)
        if row is None:
            continue
        chosen = (row["images"] or [{}])[0].get("bytes")
        if not _same_image(task.candidate.image, chosen, task.max_pixels):
            return False
        if task.partner is not None:
            rejected = (row["rejected_images"] or [{}])[0].get("bytes")
            if not _same_image(task.partner, rejected, task.max_pixels):
                return False
    return True
