"""Scored demo data for the trainer tests: the real build and score stages on the tiny model.

`scored_demo` runs `mdpo-data build --source demo` and `score_build(..., "tiny")` as library
calls. Torch is held to one thread while they run: on a 2-core machine shared with other
processes, OpenMP spin-waiting makes the tiny model many times slower with two threads.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from pathlib import Path

import torch

from mdpo_data.build.stage import run_build

from mdpo_data.config.runtime import Runtime
from mdpo_data.config.build import BuildConfig
from mdpo_data.scoring.stage import score_build


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def scored_demo(out: Path, *, n: int = 24, eval_fraction: float = 0.25, seed: int = 0,
                ref_model: str = "tiny", system_prompt: str = "auto") -> Path:
    """A scored demo build folder with about n * (1 - eval_fraction) train rows."""
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the smoke-test model warns, by design
        config = BuildConfig(source="demo", n=n, rejected="crop:0-0.2", seed=seed,
                             eval_fraction=eval_fraction, system_prompt=system_prompt)
        run_build(config, out, runtime=Runtime(overwrite=True), progress=False)
        score_build(out, ref_model, progress=False)
    return Path(out)


def copy_data(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
