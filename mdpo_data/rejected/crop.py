"""`crop:LO-HI`: a random resized crop keeping an area fraction in [LO, HI] (LO=0 means 0.01,
as the released mDPO code), aspect ratio 3/4-4/3, resized back to the original size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image

from mdpo_data.rejected.registry import SpecError, Strategy, parse_range, pct, register, rng
from mdpo_data.sources.records import BadRow

CROP_MIN_AREA = 0.01  # what LO=0 means: the released mDPO code's smallest crop area
CROP_RATIO = (3 / 4, 4 / 3)  # width / height range of the crop, as torchvision's default
# Crops are resized back up with bilinear interpolation, torchvision RandomResizedCrop's
# default (and so what the released mDPO code used).
RESAMPLE = Image.Resampling.BILINEAR


@register
@dataclass(frozen=True)
class Crop(Strategy):
    lo: float = CROP_MIN_AREA
    hi: float = 0.2
    name: ClassVar[str] = "crop"
    form: ClassVar[str] = "crop:LO-HI"
    usage: ClassVar[str] = "crop:LO-HI (area fractions, e.g. crop:0-0.2)"

    @classmethod
    def from_spec(cls, spec, arg, model_input):
        lo, hi = parse_range(spec, arg) if arg is not None else (0.0, 0.2)
        effective_lo = lo if lo > 0 else CROP_MIN_AREA
        if effective_lo >= hi:
            raise SpecError(spec, f"LO=0 means {CROP_MIN_AREA} of the area, so HI must be above it")
        return cls(spec, f"crop:{effective_lo:g}-{hi:g}", effective_lo, hi)

    def describe(self) -> str:
        return (
            f"random resized crop keeping {pct(self.lo)}-{pct(self.hi)} of the image area "
            "(aspect ratio 3/4-4/3), resized back to the original size (bilinear)"
        )

    def apply(self, image: Image.Image, seed: int) -> Image.Image:
        return resized_crop(image, self.lo, self.hi, rng(seed))


def crop_box(
    width: int, height: int, lo: float, hi: float, rng: np.random.Generator, attempts: int = 10
) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a crop whose area w*h is in [lo, hi] of width*height.

    Draws like torchvision's RandomResizedCrop.get_params (area uniform, log-uniform aspect
    ratio in 3/4-4/3, then a uniform position), but after rounding it also checks the area,
    and where `attempts` draws all fail (an elongated image, or a range near 1) it takes the
    integer crop in the area range whose aspect is closest to the drawn one. torchvision
    instead falls back to a fixed center crop whose area ignores the range (the whole image
    when the aspect is ordinary, which would make m_l the chosen image).
    """
    area = width * height
    min_px, max_px = lo * area, hi * area
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(attempts):
        target = area * rng.uniform(lo, hi)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height and min_px <= w * h <= max_px:
            break
    else:
        w, h = _closest_feasible(width, height, min_px, max_px, target, ratio)
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return left, top, w, h


def _closest_feasible(
    width: int, height: int, min_px: float, max_px: float, target: float, ratio: float
) -> tuple[int, int]:
    ws = np.arange(1, width + 1, dtype=np.float64)
    h_lo = np.maximum(1, np.ceil(min_px / ws))
    h_hi = np.minimum(height, np.floor(max_px / ws))
    feasible = h_lo <= h_hi
    if not feasible.any():
        raise BadRow(
            "image_too_small",
            f"{width}x{height} has no crop of {min_px / (width * height):g}-"
            f"{max_px / (width * height):g} of its area",
        )
    hs = np.clip(np.rint(target / ws), h_lo, h_hi)
    distance = np.abs(np.log(ws / hs) - math.log(ratio))
    best = int(np.argmin(np.where(feasible, distance, np.inf)))
    return int(ws[best]), int(hs[best])


def resized_crop(image: Image.Image, lo: float, hi: float, rng: np.random.Generator) -> Image.Image:
    """A random crop of [lo, hi] of the area, resized back to the image's size in one pass."""
    width, height = image.size
    left, top, w, h = crop_box(width, height, lo, hi, rng)
    return image.resize((width, height), RESAMPLE, box=(left, top, left + w, top + h))
