"""Where a model's image processor puts an image (resize rule, normalization): the one rule
for "the model's input size", used by `noise` and by BPO's `weaken`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

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
        return json.dumps({"size": dict(self.size), "mean": self.mean, "std": self.std,
                           "factor": self.factor}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInput:
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
