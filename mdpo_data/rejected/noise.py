"""`noise:T`: BPO forward diffusion noise at step T of 1000 (1-based), added as BPO adds it: at
the model's input resolution, in its normalized input space (`ModelInput`; LLaVA-1.5's 336 px
CLIP input when no model is given), stored as lossless PNG. The schedule is BPO's, and BPO's
`weaken` (mdpo_data.bpo) draws its noise here too."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from mdpo_data.rejected.model_input import LLAVA_15_INPUT, ModelInput
from mdpo_data.rejected.registry import SpecError, Strategy, register, rng

NOISE_STEPS = 1000


@register
@dataclass(frozen=True)
class Noise(Strategy):
    t: int = 900
    model_input: ModelInput | None = None  # None: LLAVA_15_INPUT
    name: ClassVar[str] = "noise"
    form: ClassVar[str] = "noise:T"
    usage: ClassVar[str] = "noise:T (1-1000, e.g. noise:900)"
    lossless: ClassVar[bool] = True  # JPEG would smooth the noise away
    needs_model_input: ClassVar[bool] = True
    bootstrapped: ClassVar[bool] = True

    @classmethod
    def from_spec(cls, spec, arg, model_input):
        t = parse_step(spec, arg) if arg is not None else 900
        return cls(spec, f"noise:{t}", t, model_input)

    @property
    def space(self) -> ModelInput:
        return self.model_input or LLAVA_15_INPUT

    def describe(self) -> str:
        abar = float(_ABAR[self.t - 1])
        return (
            f"forward diffusion noise at step {self.t} of {NOISE_STEPS} (BPO schedule) added as BPO "
            f"adds it: the image resized to the model's input size ({self.space.describe()}), "
            f"x_t = {math.sqrt(abar):.3f} x_0 + {math.sqrt(1 - abar):.3f} eps on the normalized "
            "input, stored as PNG (values outside 0-255 clip; the share is in the manifest)"
        )

    def apply(self, image: Image.Image, seed: int) -> Image.Image:
        return self.apply_with_stats(image, seed)[0]

    def apply_with_stats(self, image: Image.Image, seed: int) -> tuple[Image.Image, dict[str, int]]:
        size = self.space.resize_to(*image.size)
        if size != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        out, clipped = normalized_diffusion_noise(image, self.t, seed, self.space.mean, self.space.std)
        return out, {"noise_clipped": clipped, "noise_values": out.width * out.height * 3}

    def record(self, stats: Counter) -> dict[str, Any]:
        """The model input it was added at, and the share of values clipped to 0-255."""
        values = stats.get("noise_values", 0)
        return {"model_input": self.space.to_json(),
                "clipped_share": round(stats.get("noise_clipped", 0) / values, 6) if values else None}


def parse_step(spec: str, arg: str) -> int:
    if not arg.isdigit() or not 1 <= int(arg) <= NOISE_STEPS:
        raise SpecError(spec, f"noise needs a whole step T in 1..{NOISE_STEPS}")
    return int(arg)


def noise_schedule() -> np.ndarray:
    """BPO's alpha-bar for steps 1..1000 (index t-1), float64.

    betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5; abar = cumprod(1 - betas).
    """
    x = np.linspace(-6.0, 6.0, NOISE_STEPS, dtype=np.float64)
    betas = (1.0 / (1.0 + np.exp(-x))) * (5e-3 - 1e-5) + 1e-5
    return np.cumprod(1.0 - betas)


_ABAR = noise_schedule()


def _weights(image: Image.Image, t: int, what: str) -> tuple[float, float]:
    """(sqrt(abar_t), sqrt(1 - abar_t)) for a checked 1-based step `t` and an RGB `image`."""
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= NOISE_STEPS:
        raise ValueError(f"diffusion step t must be an int in 1..{NOISE_STEPS}, got {t!r}")
    if image.mode != "RGB":
        raise ValueError(f"{what} expects an RGB image, got mode {image.mode}")
    abar = float(_ABAR[t - 1])
    return math.sqrt(abar), math.sqrt(1.0 - abar)


def diffusion_noise(image: Image.Image, t: int, seed: int) -> Image.Image:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps on pixels in [-1, 1], back to uint8.

    `t` is 1-based: t=1 is one noising step (abar = 1 - beta_1), t=1000 the last. BPO's
    "t=900" is t=900 here; the released VCD/BPO code indexes its array from 0, so its
    `noise_step=900` is our t=901 (abar differs by under 1%). eps ~ N(0, 1) from `seed`.
    """
    signal, noise = _weights(image, t, "diffusion_noise")
    # In uint8 units: 127.5 * (x_t + 1) = signal * p + 127.5 * (1 - signal) + 127.5 * noise * eps
    out = rng(seed).standard_normal((image.height, image.width, 3), dtype=np.float32)
    out *= np.float32(127.5 * noise)
    out += np.asarray(image, dtype=np.float32) * np.float32(signal)
    out += np.float32(127.5 * (1.0 - signal))
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return Image.fromarray(out.astype(np.uint8), "RGB")


def normalized_diffusion_noise(image: Image.Image, t: int, seed: int, mean, std) -> tuple[Image.Image, int]:
    """BPO/VCD's x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps on the NORMALIZED input
    x = (p/255 - mean) / std, written back as uint8 pixels; -> (image, values clipped to 0-255).

    In pixels: p_t = sqrt(abar) p + 255 mean (1 - sqrt(abar)) + 255 std sqrt(1 - abar) eps, per
    channel. Noise std seen by the model at t=900: 0.931 before clipping (about 0.87-0.89 after
    clipping 5-8% of values on photos; see tests/rejected/test_contrast.py).
    """
    signal, noise = _weights(image, t, "diffusion noise")
    mean32 = np.asarray(mean, dtype=np.float32) * np.float32(255.0)
    std32 = np.asarray(std, dtype=np.float32) * np.float32(255.0 * noise)
    out = rng(seed).standard_normal((image.height, image.width, 3), dtype=np.float32)
    out *= std32
    out += np.asarray(image, dtype=np.float32) * np.float32(signal)
    out += mean32 * np.float32(1.0 - signal)
    np.rint(out, out=out)
    clipped = int(np.count_nonzero((out < 0) | (out > 255)))
    np.clip(out, 0, 255, out=out)
    return Image.fromarray(out.astype(np.uint8), "RGB"), clipped
