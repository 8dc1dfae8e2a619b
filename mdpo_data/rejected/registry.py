"""The rejected-image (m_l) registry: specs, the `Strategy` base, and `parse_spec`.

Each strategy is a small class in its own module of this package, registered in `STRATEGIES`
by the spec's name; it is parsed once from its spec string (`parse_spec("crop:0-0.2")`) and
applied per example with that example's seed (`mdpo_data.build.seeds.example_seed`), so m_l
depends only on (image, build seed, example id): not on worker count, shard size or resume
point. Each m_l is drawn ONCE and its bytes stored; the reference log-prob is computed on those
bytes (the released mDPO code redraws a crop at every step, which a precomputed reference
cannot follow).

What the rest of the pipeline needs to know about a strategy is a class attribute here, never
a test of its name: `needs_partner` (swap), `lossless` (store m_l as PNG), `needs_model_input`
(drawn in the reference model's input space), `libraries()` (what shapes its bytes: keys the
build config), `record()` (what the manifest records about it), `bootstrapped` (comes from BPO).

The built-ins run on PIL + numpy with `numpy.random.Generator(PCG64(seed))`: no global RNG is
read or changed, and workers never import torch for them (albumentations does).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from mdpo_data.rejected.model_input import ModelInput

BUILT_IN_LIBRARIES = ("pillow", "numpy")


class SpecError(ValueError):
    """A rejected-image spec that cannot be parsed; the message lists the valid forms."""

    def __init__(self, spec: str, problem: str = "invalid"):
        super().__init__(
            f"bad rejected-image strategy {spec!r}: {problem}. Valid forms: {valid_forms()}"
        )


def rng(seed: int) -> np.random.Generator:
    """The generator every strategy draws from: PCG64 seeded per example."""
    return np.random.Generator(np.random.PCG64(seed))


@dataclass(frozen=True)
class Strategy:
    """Base of the strategies: `spec` as given, `resolved` the effective form (recorded)."""

    spec: str
    resolved: str
    name: ClassVar[str]  # its key in STRATEGIES: the spec's part before ':'
    form: ClassVar[str]  # the spec's form, for --help ("crop:LO-HI")
    usage: ClassVar[str]  # the form explained, for errors ("crop:LO-HI (area fractions, ...)")
    needs_partner: ClassVar[bool] = False
    lossless: ClassVar[bool] = False  # store m_l as PNG whatever the source format
    needs_model_input: ClassVar[bool] = False  # drawn in the reference model's input space
    bootstrapped: ClassVar[bool] = False  # a BPO-style corruption (the card says so)

    @classmethod
    def from_spec(cls, spec: str, arg: str | None, model_input: ModelInput | None) -> Strategy:
        """The strategy for `spec`; `arg` is the text after ':' (None without one)."""
        if arg is not None:
            raise SpecError(spec, f"{cls.name} takes no argument")
        return cls(spec, cls.name)

    @classmethod
    def portable_spec(cls, spec: str, arg: str) -> str:
        """`spec` as a published manifest records it (no local paths); `arg` follows the ':'."""
        return spec

    def describe(self) -> str:
        raise NotImplementedError

    def apply(self, image: Image.Image, seed: int) -> Image.Image:
        raise NotImplementedError

    def apply_with_stats(self, image: Image.Image, seed: int) -> tuple[Image.Image, dict[str, int]]:
        """`apply`, plus counts the manifest sums (e.g. clipped values of `noise`)."""
        return self.apply(image, seed), {}

    def content_sha256(self) -> str | None:
        """sha256 of content the spec names but does not hold (a pipeline file), else None:
        it keys the build, so an edited file re-makes the shards."""
        return None

    def libraries(self) -> tuple[str, ...]:
        """The libraries whose code makes this strategy's bytes (their versions key the build)."""
        return BUILT_IN_LIBRARIES

    def record(self, stats: Counter) -> dict[str, Any]:
        """What the manifest records about this strategy beyond its spec; `stats` sums the
        counts `apply_with_stats` returned over the build."""
        return {}


STRATEGIES: dict[str, type[Strategy]] = {}  # in registration order, as help and errors list them


def forms() -> str:
    """The registered strategies' forms, as --rejected's help lists them."""
    return " | ".join(cls.form for cls in STRATEGIES.values())


def valid_forms() -> str:
    """The registered strategies' forms explained, as a bad spec's error lists them."""
    return ", ".join(cls.usage for cls in STRATEGIES.values())


def register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


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


def parse_range(spec: str, arg: str) -> tuple[float, float]:
    match = _RANGE.match(arg)
    if not match:
        raise SpecError(spec, "crop needs LO-HI, two area fractions such as 0-0.2")
    lo, hi = float(match[1]), float(match[2])
    if not 0 <= lo < hi <= 1:
        hint = " (fractions, not percents: 0-20% is crop:0-0.2)" if hi > 1 else ""
        raise SpecError(spec, f"need 0 <= LO < HI <= 1, got LO={lo:g} HI={hi:g}{hint}")
    return lo, hi


def pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"
