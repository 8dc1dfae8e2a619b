"""User-defined rejected images: an albumentations pipeline in its own serialization format
(`A.save` / `A.load`, YAML or JSON), seeded per example like the built-in strategies.

`--rejected albumentations:PIPELINE.yaml` reads the file once; its text and sha256 go into the
manifest and the build key, so an edited pipeline never reuses shards made by the old one.
albumentations is imported here only, and only when such a strategy runs: it pulls in torch
(about 2.6 s and 700 MB per worker process), which the built-in strategies never import.
"""

from __future__ import annotations

import hashlib
import io
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from mdpo_data.sources.records import BadRow

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
# The libraries whose code draws the image: their versions enter the build key when used.
LIBRARIES = ("albumentations", "albucore", "opencv-python-headless")


class PipelineError(ValueError):
    """A pipeline file that cannot be read or is not an albumentations pipeline."""


def read_pipeline(path: str) -> tuple[str, str]:
    """(text, data format) of a pipeline file; PipelineError naming the file and the problem."""
    data_format = FORMATS.get(Path(path).suffix.lower())
    if data_format is None:
        raise PipelineError(f"{path}: expected a .yaml, .yml or .json file saved by A.save")
    try:
        return Path(path).expanduser().read_text(encoding="utf-8"), data_format
    except (OSError, UnicodeDecodeError) as error:
        raise PipelineError(f"cannot read {path}: {error}") from None


def pipeline_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=4)
def load_pipeline(text: str, data_format: str) -> Any:
    """The pipeline as an `A.Compose` (one process keeps it: workers load it once)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
    import albumentations as A

    try:
        pipeline = A.load(io.StringIO(text), data_format=data_format)
    except Exception as error:  # noqa: BLE001 - albumentations raises many kinds; one line for all
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PipelineError(f"not an albumentations pipeline: {problem}") from None
    if not isinstance(pipeline, A.BaseCompose):
        if not isinstance(pipeline, A.BasicTransform):
            raise PipelineError(f"A.load gave a {type(pipeline).__name__}, not a transform")
        pipeline = A.Compose([pipeline])
    return pipeline


def apply_pipeline(text: str, data_format: str, image: Image.Image, seed: int) -> Image.Image:
    """The pipeline applied to an RGB image with its random state set from `seed`."""
    import numpy as np

    pipeline = load_pipeline(text, data_format)
    pipeline.set_random_seed(seed)  # albumentations 2.x: Compose's own generators, no global RNG
    out = pipeline(image=np.asarray(image.convert("RGB")))["image"]
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3:
        shape = getattr(out, "shape", None)
        raise BadRow(
            "pipeline_bad_output",
            f"expected an HxWx3 uint8 image, got {type(out).__name__} {shape} "
            f"{getattr(out, 'dtype', '')} (add A.ToRGB/A.FromFloat, drop ToTensorV2)",
        )
    return Image.fromarray(out, "RGB")
