"""`swap`: the image of another example of the same sample (`pick_partner`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar

from PIL import Image

from mdpo_data.rejected.registry import SpecError, Strategy, register, rng


@register
@dataclass(frozen=True)
class Swap(Strategy):
    """The build picks the partner with `pick_partner` and passes ITS image to `apply`."""

    name: ClassVar[str] = "swap"
    form: ClassVar[str] = "swap"
    usage: ClassVar[str] = "swap"
    needs_partner: ClassVar[bool] = True

    def describe(self) -> str:
        return (
            "the image of another example of the same sample, drawn at random "
            "(never the same image)"
        )

    def apply(self, image: Image.Image, seed: int) -> Image.Image:
        return image  # `image` is already the partner's image: nothing to draw


def pick_partner(index: int, keys: Sequence[str], seed: int, exclude: Collection[int] = ()) -> int:
    """Index of another example whose image key differs from `keys[index]`, uniformly drawn.

    Rejection sampling keeps it O(1) per example on a normal sample; a full scan follows
    only when most images share the key, and finds the case where none differs. `exclude`
    lists partners already refused (e.g. same bytes under a different key).
    """
    n = len(keys)
    if not 0 <= index < n:
        raise IndexError(f"index {index} outside a sample of {n}")
    own = keys[index]
    draw = rng(seed)
    for _ in range(64):
        j = int(draw.integers(n))
        if keys[j] != own and j not in exclude:
            return j
    candidates = [j for j, key in enumerate(keys) if key != own and j not in exclude]
    if not candidates:
        raise SpecError(
            "swap",
            f"no example of the sample ({n} rows) has an image other than {own!r}; swap needs "
            "at least two different images (use crop, moco or noise instead)",
        )
    return candidates[int(draw.integers(len(candidates)))]
