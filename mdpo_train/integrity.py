"""The trainer's data checks: verify the shards before the first step, refuse a resume on other
data, and turn an undecodable stored image into one clear error.

Kept apart from the training forward (loop._forward, data.make_batch) on purpose: these run in
setup and resume only.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from mdpo_data.format.integrity import IntegrityError, data_fingerprint, verify_shards
from mdpo_train.data import DataError, Source

DATA_KEY = "data"  # the checkpoint config key that records which data a run trained on


def verify(source: Source) -> dict[str, Any]:
    """Every shard's sha256 and row count against the manifest (streamed); DataError naming
    the shard that differs. Returns what was checked and how long it took."""
    try:
        return verify_shards(source.path, source.manifest)
    except IntegrityError as error:
        raise DataError(f"--shards: {error}") from None


def identity(source: Source) -> dict[str, str]:
    """What a checkpoint records about its data: the data fingerprint (a hash of the manifest's
    shard list: content, not location, so a moved or copied data folder still resumes)."""
    return {"fingerprint": data_fingerprint(source.manifest)}


def resume_problems(saved_config: dict[str, Any], source: Source | None) -> list[str]:
    """--resume must continue on the same data: the same fingerprint, wherever it lies now."""
    saved = saved_config.get(DATA_KEY)
    if not isinstance(saved, dict) or source is None:
        return []  # a checkpoint from before data identities were recorded
    now = identity(source)
    if saved.get("fingerprint") != now["fingerprint"]:
        return [f"--resume: the data changed since the checkpoint (fingerprint "
                f"{str(saved.get('fingerprint'))[:12]}..., now {now['fingerprint'][:12]}...): "
                "start a new run for new data"]
    return []


@contextmanager
def stored_data_errors(where: str):
    """Inside: an image (or text) of the stored rows that cannot be decoded/encoded becomes a
    DataError naming `where` and pointing at `mdpo-data validate`, not an OSError deep in PIL."""
    try:
        yield
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{where}: a stored image or text cannot be decoded ({type(error).__name__}: "
                        f"{' '.join(str(error).split())[:200]}); run `mdpo-data validate` on the "
                        "data folder") from None


class GuardedCollate:
    """A collate function under `stored_data_errors`, naming the batch's examples. (A class,
    not a closure, so DataLoader worker processes can pickle it.)"""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, rows):
        ids = ", ".join(str(r.get("example_id")) for r in rows[:4])
        with stored_data_errors(f"example(s) {ids}"):
            return self.collate(rows)
