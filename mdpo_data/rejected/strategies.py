"""Rejected-image (m_l) strategies: how the corrupted image of the conditional term is drawn.

Each strategy is a small class in the `STRATEGIES` registry, keyed by the spec's name; it is
parsed once from its spec string (`parse_spec("crop:0-0.2")`) and applied per
example with that example's seed (`mdpo_data.build.seeds.example_seed`), so m_l depends only on
(image, build seed, example id): not on worker count, shard size or resume point. Each m_l
is drawn ONCE and its bytes stored; the reference log-prob is computed on those bytes (the
released mDPO code redraws a crop at every step, which a precomputed reference cannot follow).

Strategies (paper Table 3):
  crop:LO-HI  random resized crop keeping an area fraction in [LO, HI] (LO=0 means 0.01, as
              the released code), aspect ratio 3/4-4/3, resized back to the original size
  swap        the image of another example of the same sample (`pick_partner`)
  moco        the MoCo v2 augmentation recipe
  noise:T     BPO forward diffusion noise at step T of 1000 (1-based), added as BPO adds it:
              at the model's input resolution, in its normalized input space (`ModelInput`;
              LLaVA-1.5's 336 px CLIP input when no model is given), stored as lossless PNG
  albumentations:FILE  a user's albumentations pipeline (YAML/JSON from A.save), seeded per
              example; see mdpo_data/rejected/augment.py (the only module that imports it)

The built-ins run on PIL + numpy with `numpy.random.Generator(PCG64(seed))`: no global RNG is
read or changed, and workers never import torch for them (albumentations does).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from mdpo_data.sources.records import BadRow

VALID_FORMS = (
    "crop:LO-HI (area fractions, e.g. crop:0-0.2), swap, moco, noise:T (1-1000, e.g. noise:900), "
    "albumentations:PIPELINE.yaml|.json (saved by A.save)"
)
CROP_MIN_AREA = 0.01  # what LO=0 means: the released mDPO code's smallest crop area
CROP_RATIO = (3 / 4, 4 / 3)  # width / height range of the crop, as torchvision's default
NOISE_STEPS = 1000
# Crops are resized back up with bilinear interpolation, torchvision RandomResizedCrop's
# default (and so what the released mDPO code used).
RESAMPLE = Image.Resampling.BILINEAR


class SpecError(ValueError):
    """A rejected-image spec that cannot be parsed; the message lists the valid forms."""

    def __init__(self, spec: str, problem: str = "invalid"):
        super().__init__(
            f"bad rejected-image strategy {spec!r}: {problem}. Valid forms: {VALID_FORMS}"
        )


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


# --------------------------------------------------------------------------- model input


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, LLaVA-1.5's vision tower
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ModelInput:
    """Where a model's image processor puts an image: its resize rule and its normalization.

    `size` is the processor's size dict as plain pairs; `factor` (patch x merge size) is set for
    Qwen-VL style pixel-budget processors, whose size holds min/max pixels. Plain fields, so
    the build config records it as JSON and workers need no transformers import.
    """

    size: tuple[tuple[str, int], ...] = (("shortest_edge", 336),)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    factor: int | None = None

    def describe(self) -> str:
        rule = ", ".join(f"{k} {v}" for k, v in self.size)
        return rule + (f", multiple of {self.factor}" if self.factor else "")

    def to_json(self) -> str:
        import json

        return json.dumps({"size": dict(self.size), "mean": self.mean, "std": self.std,
                           "factor": self.factor}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInput:
        import json

        data = json.loads(text)
        return cls(tuple(sorted((k, int(v)) for k, v in data["size"].items())),
                   tuple(data["mean"]), tuple(data["std"]), data.get("factor"))

    @classmethod
    def of(cls, image_processor) -> ModelInput:
        """The input space of a transformers image processor."""
        size = getattr(image_processor, "size", None) or {}
        size = size if isinstance(size, dict) else {k: getattr(size, k) for k in
                                                    ("shortest_edge", "longest_edge", "height", "width")
                                                    if getattr(size, k, None) is not None}
        mean = getattr(image_processor, "image_mean", None) or CLIP_MEAN
        std = getattr(image_processor, "image_std", None) or CLIP_STD
        merge = getattr(image_processor, "merge_size", None)
        factor = merge * image_processor.patch_size if merge else None
        if factor:  # Qwen-VL: size is {shortest_edge: min_pixels, longest_edge: max_pixels}
            size = {"min_pixels": size.get("shortest_edge", getattr(image_processor, "min_pixels", 0)),
                    "max_pixels": size.get("longest_edge", getattr(image_processor, "max_pixels", 0))}
        pairs = tuple(sorted((k, int(v)) for k, v in size.items() if v is not None))
        return cls(pairs, tuple(float(x) for x in mean), tuple(float(x) for x in std), factor)

    def resize_to(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the processor resizes this image to (up or down)."""
        size = dict(self.size)
        if self.factor:
            return _budget_size(width, height, self.factor, size.get("min_pixels", 0),
                                size.get("max_pixels", width * height))
        if "height" in size and "width" in size:
            return size["width"], size["height"]
        if "shortest_edge" in size:  # as transformers' get_resize_output_image_size rounds
            short, long = sorted((width, height))
            new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        if "longest_edge" in size:
            scale = size["longest_edge"] / max(width, height)
            return max(1, round(width * scale)), max(1, round(height * scale))
        return width, height


def _budget_size(width: int, height: int, factor: int, min_pixels: int, max_pixels: int):
    """Qwen-VL's `smart_resize`: sides multiples of `factor`, area within the pixel budget."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return w, h


LLAVA_15_INPUT = ModelInput()  # the default when no model is given: 336 px CLIP (LLaVA-1.5)


# --------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Strategy:
    """Base of the strategies: `spec` as given, `resolved` the effective form (recorded)."""

    spec: str
    resolved: str
    name: ClassVar[str]  # its key in STRATEGIES: the spec's part before ':'
    needs_partner: ClassVar[bool] = False
    lossless: ClassVar[bool] = False  # store m_l as PNG whatever the source format

    @classmethod
    def from_spec(cls, spec: str, arg: str | None, model_input: ModelInput | None) -> Strategy:
        """The strategy for `spec`; `arg` is the text after ':' (None without one)."""
        if arg is not None:
            raise SpecError(spec, f"{cls.name} takes no argument")
        return cls(spec, cls.name)

    def describe(self) -> str:
        raise NotImplementedError

    def apply(self, image: Image.Image, seed: int) -> Image.Image:
        raise NotImplementedError

    def apply_with_stats(self, image: Image.Image, seed: int) -> tuple[Image.Image, dict[str, int]]:
        """`apply`, plus counts the manifest sums (e.g. clipped values of `noise`)."""
        return self.apply(image, seed), {}


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


@register
@dataclass(frozen=True)
class Crop(Strategy):
    lo: float = CROP_MIN_AREA
    hi: float = 0.2
    name: ClassVar[str] = "crop"

    @classmethod
    def from_spec(cls, spec, arg, model_input):
        lo, hi = _parse_range(spec, arg) if arg is not None else (0.0, 0.2)
        effective_lo = lo if lo > 0 else CROP_MIN_AREA
        if effective_lo >= hi:
            raise SpecError(spec, f"LO=0 means {CROP_MIN_AREA} of the area, so HI must be above it")
        return cls(spec, f"crop:{effective_lo:g}-{hi:g}", effective_lo, hi)

    def describe(self) -> str:
        return (
            f"random resized crop keeping {_pct(self.lo)}-{_pct(self.hi)} of the image area "
            "(aspect ratio 3/4-4/3), resized back to the original size (bilinear)"
        )

    def apply(self, image: Image.Image, seed: int) -> Image.Image:
        return resized_crop(image, self.lo, self.hi, _rng(seed))


@register
@dataclass(frozen=True)
class Swap(Strategy):
    """The build picks the partner with `pick_partner` and passes ITS image to `apply`."""

    name: ClassVar[str] = "swap"
    needs_partner: ClassVar[bool] = True

    def describe(self) -> str:
        return (
            "the image of another example of the same sample, drawn at random "
            "(never the same image)"
        )

    def apply(self, image: Image.Image, seed: int) -> Image.Image:
        return image  # `image` is already the partner's image: nothing to draw


@register
@dataclass(frozen=True)
class Moco(Strategy):
    name: ClassVar[str] = "moco"

    def describe(self) -> str:
        return (
            "MoCo v2 augmentation: random resized crop keeping 20%-100% of the area (aspect ratio "
            "3/4-4/3) resized back to the original size, color jitter (brightness, contrast, "
            "saturation 0.4, hue 0.1) with p=0.8, grayscale with p=0.2, Gaussian blur "
            "(sigma 0.1-2) with p=0.5, horizontal flip with p=0.5"
        )

    def apply(self, image: Image.Image, seed: int) -> Image.Image:
        return moco_v2(image, _rng(seed))


@register
@dataclass(frozen=True)
class Noise(Strategy):
    t: int = 900
    model_input: ModelInput | None = None  # None: LLAVA_15_INPUT
    name: ClassVar[str] = "noise"
    lossless: ClassVar[bool] = True  # JPEG would smooth the noise away

    @classmethod
    def from_spec(cls, spec, arg, model_input):
        t = _parse_step(spec, arg) if arg is not None else 900
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


@register
@dataclass(frozen=True)
class Albumentations(Strategy):
    """A user's pipeline; `text` is the file as read once, so every worker runs the same one."""

    path: str = ""
    text: str = ""
    data_format: str = "yaml"
    name: ClassVar[str] = "albumentations"

    @property
    def sha256(self) -> str:
        from mdpo_data.rejected.augment import pipeline_sha256

        return pipeline_sha256(self.text)

    def describe(self) -> str:
        return (
            f"albumentations pipeline {Path(self.path).name} (sha256 {self.sha256[:16]}), "
            "random state set from each example's seed"
        )

    def apply(self, image: Image.Image, seed: int) -> Image.Image:
        from mdpo_data.rejected.augment import apply_pipeline

        return apply_pipeline(self.text, self.data_format, image, seed)

    @classmethod
    def from_spec(cls, spec, arg, model_input):
        """Read and load the pipeline now, so a bad file fails before any work."""
        from mdpo_data.rejected.augment import PipelineError, load_pipeline, pipeline_sha256, read_pipeline

        path = arg or ""
        if not path:
            raise SpecError(spec, "albumentations needs a pipeline file: albumentations:FILE.yaml")
        try:
            text, data_format = read_pipeline(path)
            load_pipeline(text, data_format)
        except PipelineError as error:
            raise SpecError(spec, str(error)) from None
        resolved = f"albumentations:{pipeline_sha256(text)[:16]}"
        return cls(spec, resolved, path, text, data_format)


def parse_spec(spec: str, model_input: ModelInput | None = None) -> Strategy:
    """Parse a strategy spec; bare `crop` and `noise` mean the paper's crop:0-0.2 and noise:900.

    `model_input` is the reference model's input space, used by `noise` (default LLaVA-1.5)."""
    if not isinstance(spec, str):
        raise SpecError(repr(spec), "expected a string")
    name, sep, arg = spec.strip().partition(":")
    name, arg = name.strip().lower(), arg.strip()
    if name not in STRATEGIES:
        raise SpecError(spec, f"unknown strategy {name!r}")
    return STRATEGIES[name].from_spec(spec, arg if sep else None, model_input)


_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"^{_NUMBER}\s*-\s*{_NUMBER}$")


def _parse_range(spec: str, arg: str) -> tuple[float, float]:
    match = _RANGE.match(arg)
    if not match:
        raise SpecError(spec, "crop needs LO-HI, two area fractions such as 0-0.2")
    lo, hi = float(match[1]), float(match[2])
    if not 0 <= lo < hi <= 1:
        hint = " (fractions, not percents: 0-20% is crop:0-0.2)" if hi > 1 else ""
        raise SpecError(spec, f"need 0 <= LO < HI <= 1, got LO={lo:g} HI={hi:g}{hint}")
    return lo, hi


def _parse_step(spec: str, arg: str) -> int:
    if not arg.isdigit() or not 1 <= int(arg) <= NOISE_STEPS:
        raise SpecError(spec, f"noise needs a whole step T in 1..{NOISE_STEPS}")
    return int(arg)


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


# --------------------------------------------------------------------------- swap


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
    rng = _rng(seed)
    for _ in range(64):
        j = int(rng.integers(n))
        if keys[j] != own and j not in exclude:
            return j
    candidates = [j for j, key in enumerate(keys) if key != own and j not in exclude]
    if not candidates:
        raise SpecError(
            "swap",
            f"no example of the sample ({n} rows) has an image other than {own!r}; swap needs "
            "at least two different images (use crop, moco or noise instead)",
        )
    return candidates[int(rng.integers(len(candidates)))]


# --------------------------------------------------------------------------- crop


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


# --------------------------------------------------------------------------- moco


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


# --------------------------------------------------------------------------- noise


def noise_schedule() -> np.ndarray:
    """BPO's alpha-bar for steps 1..1000 (index t-1), float64.

    betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5; abar = cumprod(1 - betas).
    """
    x = np.linspace(-6.0, 6.0, NOISE_STEPS, dtype=np.float64)
    betas = (1.0 / (1.0 + np.exp(-x))) * (5e-3 - 1e-5) + 1e-5
    return np.cumprod(1.0 - betas)


_ABAR = noise_schedule()


def diffusion_noise(image: Image.Image, t: int, seed: int) -> Image.Image:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps on pixels in [-1, 1], back to uint8.

    `t` is 1-based: t=1 is one noising step (abar = 1 - beta_1), t=1000 the last. BPO's
    "t=900" is t=900 here; the released VCD/BPO code indexes its array from 0, so its
    `noise_step=900` is our t=901 (abar differs by under 1%). eps ~ N(0, 1) from `seed`.
    """
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= NOISE_STEPS:
        raise ValueError(f"diffusion step t must be an int in 1..{NOISE_STEPS}, got {t!r}")
    if image.mode != "RGB":
        raise ValueError(f"diffusion_noise expects an RGB image, got mode {image.mode}")
    abar = float(_ABAR[t - 1])
    signal, noise = math.sqrt(abar), math.sqrt(1.0 - abar)
    # In uint8 units: 127.5 * (x_t + 1) = signal * p + 127.5 * (1 - signal) + 127.5 * noise * eps
    out = _rng(seed).standard_normal((image.height, image.width, 3), dtype=np.float32)
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
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= NOISE_STEPS:
        raise ValueError(f"diffusion step t must be an int in 1..{NOISE_STEPS}, got {t!r}")
    if image.mode != "RGB":
        raise ValueError(f"diffusion noise expects an RGB image, got mode {image.mode}")
    abar = float(_ABAR[t - 1])
    signal, noise = math.sqrt(abar), math.sqrt(1.0 - abar)
    mean32 = np.asarray(mean, dtype=np.float32) * np.float32(255.0)
    std32 = np.asarray(std, dtype=np.float32) * np.float32(255.0 * noise)
    out = _rng(seed).standard_normal((image.height, image.width, 3), dtype=np.float32)
    out *= std32
    out += np.asarray(image, dtype=np.float32) * np.float32(signal)
    out += mean32 * np.float32(1.0 - signal)
    np.rint(out, out=out)
    clipped = int(np.count_nonzero((out < 0) | (out > 255)))
    np.clip(out, 0, 255, out=out)
    return Image.fromarray(out.astype(np.uint8), "RGB"), clipped
