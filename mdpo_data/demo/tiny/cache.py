"""The tiny LLaVA cached on disk: built once, atomically, for `--ref-model tiny` and the tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mdpo_data.demo.tiny.llava import TINY_LLAVA_VERSION, build_tiny_llava


def cache_dir() -> Path:
    """$MDPO_CACHE, else ~/.cache/mdpo-toolkit."""
    return Path(os.environ.get("MDPO_CACHE") or Path.home() / ".cache" / "mdpo-toolkit")


def tiny_model_path() -> Path:
    """The tiny LLaVA, built on first use into the cache; concurrent callers are safe."""
    return cached_build(cache_dir() / f"tiny-llava-{TINY_LLAVA_VERSION}", lambda tmp: build_tiny_llava(tmp, seed=0))


def cached_build(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, made by `build(folder)` on first use. Built in a temp folder beside the target
    and renamed into place, so a reader never sees a half-written model; a losing racer
    discards its copy."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        os.rename(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
