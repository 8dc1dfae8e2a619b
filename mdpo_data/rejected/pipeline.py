"""`albumentations:FILE`: a user's albumentations pipeline (YAML/JSON from A.save), seeded per
example. Reading and running it lives in `mdpo_data.rejected.augment`, the only module that
imports albumentations."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from mdpo_data.rejected.registry import BUILT_IN_LIBRARIES, SpecError, Strategy, register


@register
@dataclass(frozen=True)
class Albumentations(Strategy):
    """A user's pipeline; `text` is the file as read once, so every worker runs the same one."""

    path: str = ""
    text: str = ""
    data_format: str = "yaml"
    name: ClassVar[str] = "albumentations"
    form: ClassVar[str] = "albumentations:PIPELINE.yaml"
    usage: ClassVar[str] = "albumentations:PIPELINE.yaml|.json (saved by A.save)"

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

    @classmethod
    def portable_spec(cls, spec: str, arg: str) -> str:
        return f"{cls.name}:{Path(arg).name}" if arg else spec

    def content_sha256(self) -> str:
        return self.sha256

    def libraries(self) -> tuple[str, ...]:
        from mdpo_data.rejected.augment import LIBRARIES

        return BUILT_IN_LIBRARIES + LIBRARIES

    def record(self, stats: Counter) -> dict[str, Any]:
        """The pipeline's text as used, and its sha256."""
        return {"pipeline": self.text, "pipeline_sha256": self.sha256}
