"""`moco`: the MoCo v2 augmentation recipe, with the PIL operations torchvision uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from mdpo_data.rejected.crop import resized_crop
from mdpo_data.rejected.registry import Strategy, register, rng


@register
@dataclass(frozen=True)
class Moco(Strategy):
    name: ClassVar[str] = "moco"
    form: ClassVar[str] = "moco"
    usage: ClassVar[str] = "moco"

    def describe(self) -> str:
        return (
            "MoCo v2 augmentation: random resized crop keeping 20%-100% of the area (aspect ratio "
            "3/4-4/3) resized back to the original size, color jitter (brightness, contrast, "
            "saturation 0.4, hue 0.1) with p=0.8, grayscale with p=0.2, Gaussian blur "
            "(sigma 0.1-2) with p=0.5, horizontal flip with p=0.5"
        )

    def apply(self, image: Image.Image, seed: int) -> Image.Image:
        return moco_v2(image, rng(seed))


def moco_v2(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """MoCo v2's augmentation with the same PIL operations torchvision uses on PIL images."""
    image = resized_crop(image, 0.2, 1.0, rng)
    if rng.random() < 0.8:
        image = color_jitter(image, rng, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    if rng.random() < 0.2:
        image = image.convert("L").convert("RGB")
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def color_jitter(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> Image.Image:
    """torchvision ColorJitter: four factors applied in a random order (PIL enhancers)."""
    factors = (
        rng.uniform(max(0.0, 1 - brightness), 1 + brightness),
        rng.uniform(max(0.0, 1 - contrast), 1 + contrast),
        rng.uniform(max(0.0, 1 - saturation), 1 + saturation),
        rng.uniform(-hue, hue),
    )
    for op in rng.permutation(4):
        if op == 0:
            image = ImageEnhance.Brightness(image).enhance(factors[0])
        elif op == 1:
            image = ImageEnhance.Contrast(image).enhance(factors[1])
        elif op == 2:
            image = ImageEnhance.Color(image).enhance(factors[2])
        else:
            image = shift_hue(image, factors[3])
    return image


def shift_hue(image: Image.Image, factor: float) -> Image.Image:
    """Rotate hue by `factor` of a turn (-0.5..0.5) in PIL's 8-bit HSV, as torchvision does."""
    h, s, v = image.convert("HSV").split()
    shift = int(factor * 255) % 256  # torchvision truncates toward zero, then wraps
    hue = ((np.asarray(h, dtype=np.uint16) + shift) % 256).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")
