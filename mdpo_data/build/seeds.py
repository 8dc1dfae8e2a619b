"""Per-example seeds: every random draw for an example comes from (build seed, example id).

Deriving the seed from the id, not from a position or a shared RNG stream, makes each
example's rejected image independent of worker count, shard size and resume point.
"""

from __future__ import annotations

import hashlib


def example_seed(build_seed: int, example_id: str, purpose: str = "") -> int:
    """A 63-bit seed (fits int64 columns and torch/numpy generators) for one example."""
    digest = hashlib.sha256(f"{build_seed}\x00{example_id}\x00{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
