"""Seeded sampling without replacement, duplicate removal and the train/eval split.

Sampling orders candidates by sha256(seed, example id) and keeps the first n. The order
depends on nothing but the seed and the ids: not on library versions, not on RNG streams,
not on the order rows arrive in; adding rows to a source never reshuffles the others.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from mdpo_data.records import Candidate, Skip


@dataclass
class Pool:
    """Everything a source yielded, reduced to unique candidates, with the counts to report."""

    candidates: list[Candidate] = field(default_factory=list)
    read: int = 0  # items the source yielded (candidates + skips)
    rows: int = 0  # source file rows those items came from (silkie: one row, several pairs)
    pairs: int = 0  # pairs the source formed, duplicates included
    skipped: Counter = field(default_factory=Counter)
    skip_examples: dict[str, str] = field(default_factory=dict)  # first "where: detail" per reason


def collect(items: Iterable[Candidate | Skip]) -> Pool:
    """Drain a source: count skips by reason, drop exact-duplicate pairs (first one wins)."""
    pool = Pool()
    seen_pairs: set[tuple] = set()
    seen_ids: set[str] = set()
    rows: set[int] = set()
    for item in items:
        pool.read += 1
        row = item.row
        if row is None:
            pool.rows += 1
        elif row not in rows:
            rows.add(row)
            pool.rows += 1
        if isinstance(item, Skip):
            pool.skipped[item.reason] += 1
            pool.skip_examples.setdefault(item.reason, f"{item.where}: {item.detail}".rstrip(": "))
            continue
        if item.example_id in seen_ids:
            raise AssertionError(f"source yielded the example id {item.example_id} twice")
        seen_ids.add(item.example_id)
        pool.pairs += 1
        key = item.dedup_key
        if key in seen_pairs:
            pool.skipped["duplicate_pair"] += 1
            pool.skip_examples.setdefault("duplicate_pair", item.example_id)
            continue
        seen_pairs.add(key)
        pool.candidates.append(item)
    return pool


def order_key(seed: int, example_id: str) -> bytes:
    return hashlib.sha256(f"sample\x00{seed}\x00{example_id}".encode()).digest()


def sample(candidates: list[Candidate], n: int, seed: int) -> list[Candidate]:
    """n candidates without replacement, in a seeded random order (all of them if fewer)."""
    ranked = sorted(candidates, key=lambda c: order_key(seed, c.example_id))
    return ranked[:n]


def split_eval(sampled: list[Candidate], eval_fraction: float) -> dict[str, list[Candidate]]:
    """The first round(fraction * n) sampled examples go to `eval` (the order is already random)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval fraction must be in [0, 1), got {eval_fraction}")
    k = round(eval_fraction * len(sampled))
    if eval_fraction > 0 and k == 0 and len(sampled) > 1:
        k = 1
    splits = {"train": sampled[k:]}
    if k:
        splits["eval"] = sampled[:k]
    return splits
