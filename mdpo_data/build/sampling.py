"""Seeded sampling without replacement, duplicate removal and the train/eval split.

Sampling orders candidates by sha256(seed, example id) and keeps the first n. The order
depends on nothing but the seed and the ids: not on library versions, not on RNG streams,
not on the order rows arrive in; adding rows to a source never reshuffles the others.

`draw` does collect + sample in one pass for a build's plan. A source stream may offer
`refs()` (each pair as a `Ref`: id, row, dedup bucket; or `ref_rows()`, the same as one list
per source row, which saves a step per pair) and `materialize(refs)`: the plan then
keeps ids, not texts, and only the sampled rows are read again (an 80K-row VLFeedback file,
426K pairs, plans in 2.6-3x the time `json.loads` of its lines takes, in 300 MB; see
benchmarks/bench_plan.py).
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mdpo_data.sources.records import Candidate, Skip


@dataclass
class Pool:
    """Everything a source yielded, reduced to unique candidates, with the counts to report."""

    candidates: list[Candidate] = field(default_factory=list)
    read: int = 0  # items the source yielded (candidates + skips)
    rows: int = 0  # source file rows those items came from (silkie: one row, several pairs)
    pairs: int = 0  # pairs the source formed, duplicates included
    skipped: Counter = field(default_factory=Counter)
    skip_examples: dict[str, str] = field(default_factory=dict)  # first "where: detail" per reason
    available: int = 0  # unique candidates (`draw` keeps only the sampled ones)


class Ref(NamedTuple):
    """A candidate known by id only; its source re-reads the row if it is sampled.

    `bucket` is equal for pairs with equal `Candidate.dedup_key` (a hash: equal buckets are
    checked on the full candidates). Sources that yield Refs always have rejected responses.
    """

    example_id: str
    row: int
    bucket: int


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


def order_prefix(seed: int) -> str:
    """What `order_key` hashes before the id (the one definition of the sampling order)."""
    return f"sample\x00{seed}\x00"


def order_key(seed: int, example_id: str) -> bytes:
    return hashlib.sha256((order_prefix(seed) + example_id).encode()).digest()


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


def draw(
    items: Iterable[Any], n: int, seed: int, keep_missing: bool = True
) -> tuple[Pool, list[Candidate], int]:
    """`sample(collect(items).candidates, n, seed)` in one pass -> (pool, sampled, missing).

    `missing` counts unique candidates without a rejected response; they are sampled only
    when `keep_missing`. Memory holds ids and hashes, not texts, for sources with `refs()`.
    """
    gc_was_on = gc.isenabled()
    gc.disable()  # ~1M small long-lived objects, no cycles: full collections rescan them all
    try:
        pool, ranked, collided, missing = _scan(items, n, seed, keep_missing)
    finally:
        if gc_was_on:
            gc.enable()
    duplicates = _duplicates(items, collided)
    pool.available = pool.pairs - len(duplicates)
    if duplicates:
        pool.skipped["duplicate_pair"] += len(duplicates)
        pool.skip_examples.setdefault("duplicate_pair", duplicates[0].example_id)
    dropped = set(map(id, duplicates))
    for group in collided.values():  # the later items of a bucket that are not duplicates
        ranked.extend((order_key(seed, i.example_id), p, i) for p, i in group[1:] if id(i) not in dropped)
    chosen = [item for _, _, item in heapq.nsmallest(n, ranked)]
    return pool, _full(items, chosen), missing


def _scan(items: Any, n: int, seed: int, keep_missing: bool) -> tuple[Pool, list, dict, int]:
    """Count; keep the n first-ranked items (a bucket's first item is never a duplicate);
    set aside the later items of buckets seen before, for `_duplicates` to check."""
    ref_rows, refs = getattr(items, "ref_rows", None), getattr(items, "refs", None)
    pool, ranked, seen, collided = Pool(), [], {}, {}
    rows: set[int] = set()
    missing = unnumbered = pairs = 0
    prefix = order_prefix(seed)  # order_key inlined below: the loop runs once per pair
    sha256, add_row, position = hashlib.sha256, rows.add, -1
    worst = None  # ranked[-1]'s key once ranked holds n
    for batch in ref_rows() if ref_rows else ([item] for item in (refs() if refs else items)):
        if not batch:
            continue
        if batch[0].row is None:
            unnumbered += 1
        else:
            add_row(batch[0].row)
        for item in batch:
            position += 1
            if type(item) is Ref:  # the common case of a planning stream, first and lean
                bucket = item.bucket
            elif isinstance(item, Skip):
                pool.skipped[item.reason] += 1
                if item.reason not in pool.skip_examples:
                    pool.skip_examples[item.reason] = f"{item.where}: {item.detail}".rstrip(": ")
                continue
            else:
                bucket = item.dedup_key
            pairs += 1
            if bucket in seen:
                collided.setdefault(bucket, [(None, seen[bucket])]).append((position, item))
                continue
            seen[bucket] = item
            if type(item) is not Ref and item.rejected is None:
                missing += 1
                if not keep_missing:
                    continue
            key = sha256((prefix + item.example_id).encode()).digest()
            if worst is None or key < worst:
                bisect.insort(ranked, (key, position, item))
                if len(ranked) > n:
                    ranked.pop()
                if len(ranked) >= n:
                    worst = ranked[-1][0] if ranked else None
    pool.pairs = pairs
    pool.read = pool.pairs + sum(pool.skipped.values())
    pool.rows = len(rows) + unnumbered
    return pool, ranked, collided, missing


def _duplicates(items: Any, collided: dict) -> list:
    """The items of colliding buckets whose full dedup key an earlier item had (stream order;
    a bucket's first item is never one)."""
    seen, duplicates = set(), []
    for group in collided.values():
        full = _full(items, [item for _, item in group])
        for (position, item), candidate in zip(group, full):
            if candidate.dedup_key in seen:
                duplicates.append((position, item))
            seen.add(candidate.dedup_key)
    return [item for _, item in sorted(duplicates, key=lambda d: d[0])]


def _full(items: Any, group: list) -> list[Candidate]:
    """`group` with its Refs replaced by the Candidates their source reads back."""
    lazy = [item for item in group if isinstance(item, Ref)]
    full = dict(zip(lazy, items.materialize(lazy))) if lazy else {}
    return [full.get(item, item) for item in group]
