"""Training data: scored mdpo-data shards -> batches of sequences and stored reference log-probs.

Read only through `mdpo_data.format.shards.open_dataset` (a build folder or a Hub export) and the
build's manifest.json, which must sit at the folder's root (exports copy it there): it says
which model, dtype and max length scored the reference log-probs.

The order of examples is a pure function of (seed, epoch), and a step is a fixed slice of it,
so a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mdpo_data.format import schema
from mdpo_data.format.manifest import Manifest, ManifestError, load_manifest
from mdpo_train.losses import CHOSEN, CHOSEN_REJECTED_IMAGE, REJECTED

# sequence -> (stored reference column, image column, response column)
SEQUENCE_COLUMNS = {
    CHOSEN: (schema.REF_CHOSEN, "images", "chosen"),
    REJECTED: (schema.REF_REJECTED, "images", "rejected"),
    CHOSEN_REJECTED_IMAGE: (schema.REF_CHOSEN_REJECTED_IMAGE, "rejected_images", "chosen"),
}
# --no-image ("DPO (No Image)"): the same responses without the image, against the no-image columns
NO_IMAGE_SEQUENCE_COLUMNS = {
    CHOSEN: (schema.REF_CHOSEN_NO_IMAGE, None, "chosen"),
    REJECTED: (schema.REF_REJECTED_NO_IMAGE, None, "rejected"),
}
READ_COLUMNS = ["example_id", "images", "rejected_images", "prompt", "chosen", "rejected",
                *schema.REF_LOGP_COLUMNS, *schema.NO_IMAGE_COLUMNS]


def sequence_columns(no_image: bool = False) -> dict[str, tuple]:
    return NO_IMAGE_SEQUENCE_COLUMNS if no_image else SEQUENCE_COLUMNS


class DataError(ValueError):
    """The data folder cannot be trained on (said before or while it is read)."""


@dataclass(frozen=True)
class Source:
    """What the manifest says about a scored data folder (read without touching the rows)."""

    path: Path
    manifest: Manifest

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The scorer's fingerprint as it recorded it ({} when unscored): the identity checks
        (`scoring.logprobs.response_rule_problems`, `mdpo_train.verify`) read its hashes."""
        return self.manifest.fingerprint.as_dict() if self.manifest.fingerprint else {}


def inspect_source(path: str | Path, scored: bool = True) -> tuple[Source | None, list[str]]:
    """The folder's manifest and every problem that makes it untrainable (cheap: no rows read).

    `scored=False`: a loss that reads no reference (sft) trains from unscored data too."""
    path = Path(path)
    if not path.is_dir():
        return None, [f"--shards: {path} is not a folder"]
    try:
        manifest = load_manifest(path)
    except ManifestError as error:
        return None, [
            f"--shards: {error} (the trainer needs the build's manifest.json, also in a Hub "
            "export, to know which model scored the reference log-probs)"
        ]
    if scored and not manifest.scored:
        return None, [
            f"--shards: {path} has no reference log-probs yet; run "
            f"`mdpo-data score {path} --ref-model MODEL` first (the trainer never runs the reference)"
        ]
    return Source(path, manifest), []


class Rows(torch.utils.data.Dataset):
    """One split's rows as plain dicts, images as the exact stored bytes.

    Read through the Arrow format, so `datasets` neither decodes images nor writes a cast
    copy (cache files) into the data folder. `take` is what a DataLoader calls per batch.
    """

    def __init__(self, dataset):
        self.data = dataset.select_columns(READ_COLUMNS).with_format("arrow")

    def __len__(self) -> int:
        return len(self.data)

    def take(self, indices) -> list[dict[str, Any]]:
        return self.data[list(indices)].to_pylist()

    __getitems__ = take  # DataLoader fetches a whole batch with one call

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.take([index])[0]

    def column(self, name: str) -> list[Any]:
        return self.data[name].to_pylist()


def _finite_rows(rows: Rows, columns: list[str]) -> list[int]:
    """Indices of rows whose every listed column is present and finite."""
    keep = torch.ones(len(rows), dtype=torch.bool)
    for column in columns:
        values = [math.nan if v is None else v for v in rows.column(column)]
        keep &= torch.isfinite(torch.tensor(values, dtype=torch.float64))
    return keep.nonzero().flatten().tolist()


def load_splits(source: Source, sequences: tuple[str, ...], no_image: bool = False) -> dict[str, Rows]:
    """{split: Rows} with unusable rows dropped: null or non-finite reference log-probs of the
    sequences this loss needs (a counted warning, never a crash later). Pass no sequences
    for a loss that reads no reference."""
    from mdpo_data.format.shards import open_dataset

    columns = [sequence_columns(no_image)[s][0] for s in sequences]
    splits = {}
    for split, dataset in open_dataset(source.path).items():
        keep = _finite_rows(Rows(dataset), columns)
        dropped = len(dataset) - len(keep)
        if dropped:
            warnings.warn(
                f"{split}: dropped {dropped} of {len(dataset)} rows whose reference log-probs "
                f"({', '.join(columns)}) are null or not finite (e.g. unscorable: too long)",
                stacklevel=2,
            )
            dataset = dataset.select(keep)  # an in-memory index, nothing written
        if len(dataset):
            splits[split] = Rows(dataset)
    if "train" not in splits:
        hint = " (--no-image needs data scored with --no-image-logps)" if no_image else ""
        raise DataError(f"--shards: {source.path} has no train rows with usable reference log-probs{hint}")
    return splits


# ------------------------------------------------------------------ batches
@dataclass
class Batch:
    """One micro-batch, encoded: the examples' sequences as packed rows (mdpo_data.scoring.packing;
    y_w and y_l under m_w share a row) whose outputs are sequence-major (all `chosen`, then all
    `rejected`, ...), and the stored reference log-probs of the same examples."""

    example_ids: list[str]
    sequences: tuple[str, ...]
    inputs: Any  # mdpo_data.scoring.packing.Packed (None when every example was too long)
    reference: dict[str, torch.Tensor]  # sequence name -> [B] float32
    too_long: int = 0  # examples dropped because a sequence exceeds max_length

    def __len__(self) -> int:
        return len(self.example_ids)


def pack_rows(rows: list[dict[str, Any]], processor, sequences: tuple[str, ...], *,
              share: bool = True, no_image: bool = False):
    """Packed rows for `rows`: per example, the sequences under the same image column form one
    prefix group (MDPO: (y_w, y_l) under m_w, y_w under m_l; --no-image: (y_w, y_l) without
    an image). Output slot of sequence k of example i: k * len(rows) + i."""
    from mdpo_data.scoring.logprobs import PrefixGroup, row_sequences
    from mdpo_data.scoring.packing import encode_groups

    columns = sequence_columns(no_image)
    groups, slots = [], []
    for i, row in enumerate(rows):
        seqs, by_image = row_sequences(row, no_image=no_image), {}
        for k, name in enumerate(sequences):
            by_image.setdefault(columns[name][1], []).append(k)
        for ks in by_image.values():
            members = [seqs[columns[sequences[k]][0]] for k in ks]
            # the system message is part of the prompt the reference was scored with
            groups.append(PrefixGroup(members[0].image, members[0].question,
                                      tuple(m.response for m in members), members[0].system))
            slots.append([k * len(rows) + i for k in ks])
    return encode_groups(processor, groups, share=share, slots=slots)


def make_batch(rows: list[dict[str, Any]], processor, sequences: tuple[str, ...],
               max_length: int | None, *, share: bool = True, no_image: bool = False) -> Batch:
    """Rows -> one encoded Batch, through the scorer's own `row_sequences` and rendering.

    Nothing is truncated: an example any of whose sequences (counted on its own, as the scorer
    ran it) exceeds max_length is dropped (the scorer left such rows null, so this only happens
    with a smaller --max-length)."""
    columns = sequence_columns(no_image)
    n = len(rows)
    packed = pack_rows(rows, processor, sequences, share=share, no_image=no_image) if rows else None
    if packed is not None and max_length is not None:
        fits = [all(packed.lengths[k * n + i] <= max_length for k in range(len(sequences)))
                for i in range(n)]
        if not all(fits):
            rows = [row for row, ok in zip(rows, fits) if ok]
            packed = pack_rows(rows, processor, sequences, share=share, no_image=no_image) if rows else None
    reference = {  # unscored (None) -> NaN: only a loss that reads no reference trains on it
        name: torch.tensor([math.nan if row[columns[name][0]] is None else row[columns[name][0]]
                            for row in rows], dtype=torch.float32)
        for name in sequences
    }
    return Batch([row["example_id"] for row in rows], sequences, packed, reference, n - len(rows))


class Collate:
    """DataLoader collate_fn: encodes in the loader's worker processes when num_workers > 0."""

    def __init__(self, processor, sequences: tuple[str, ...], max_length: int | None, *,
                 share: bool = True, no_image: bool = False):
        self.processor, self.sequences, self.max_length = processor, sequences, max_length
        self.share, self.no_image = share, no_image

    def __call__(self, rows: list[dict[str, Any]]) -> Batch:
        return make_batch(rows, self.processor, self.sequences, self.max_length,
                          share=self.share, no_image=self.no_image)


# ------------------------------------------------------------------ the data position
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n) that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def plan_epoch(n: int, seed: int, epoch: int, global_batch: int, world: int) -> list[list[int]]:
    """The examples of each optimizer step of one epoch. The last step may be short; a tail
    too short to give every process one example is dropped (a process with no batch would
    stall the others)."""
    order = epoch_order(n, seed, epoch)
    steps = [order[i : i + global_batch] for i in range(0, n, global_batch)]
    return [step for step in steps if len(step) >= world]


def local_micro_batches(step: list[int], rank: int, world: int, per_device: int) -> list[list[int]]:
    """This process's share of one step (every world-th example), cut into micro-batches."""
    mine = step[rank::world]
    return [mine[i : i + per_device] for i in range(0, len(mine), per_device)]
