"""Data sources: each turns one published data set into a stream of `Candidate | Skip`.

    silkie          VLFeedback (jsonl + merged_images zip/folder, or parquet), paired by ratings
    llava-instruct  LLaVA-Instruct-150K gold answers (rejected=None: bootstrapped later)
    pairs           any pairwise set: mDPO json, RLAIF-V, TRL, HA-DPO, POVID, or a column map
    demo            built-in synthetic shapes, no files, no network

Each source is one small class in the `SOURCES` registry (as contrast.py's strategies and
mdpo_train/losses.py's terms): its name, license, citation, the options it reads, the module
that streams it, and the hooks by which it shapes a build's plan. Everything else asks the
registry (`get`, `names`), never tests a source's name. `open_source` validates the options
eagerly (a `SourceError` naming the option and the fix, before anything is read) and returns
a lazy iterator. Candidates are text only: images stay behind an `ImageRef` until the sampled
rows are materialised. Source modules are imported on use, so `import mdpo_data.sources`
stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from mdpo_data.sources.records import Candidate, Skip

PAIRINGS = ("best-worst", "all", "best-random")


class SourceError(ValueError):
    """A source configuration problem (missing path, bad column map, unknown pairing)."""


class Source:
    """One data source. Subclasses set the class attributes and may override the hooks."""

    name: ClassVar[str]
    module: ClassVar[str]  # defines `stream(**options)` for the options in `uses`
    license: ClassVar[str] = "unspecified"  # the card asks the user to fill it in
    citation: ClassVar[str] = ""
    # Options it reads; others are ignored, with a warning when set (the build seed is
    # global, so it never warns).
    uses: ClassVar[frozenset[str]] = frozenset()
    subsets: ClassVar[dict[str, str]] = {}  # --subset name -> id prefix

    def stream(self, **options: Any) -> Iterator[Candidate | Skip]:
        return importlib.import_module(self.module).stream(**options)

    @property
    def hub_id(self) -> str | None:
        """The Hub dataset it downloads by default (its module's HUB_ID), for the card."""
        return getattr(importlib.import_module(self.module), "HUB_ID", None)

    def after_sampling(self, config: Any, sampled: list[Candidate]) -> list[Candidate]:
        """The sampled pairs as the build uses them (`config`: a BuildConfig)."""
        return sampled

    def after_split(self, config: Any, splits: dict[str, list[Candidate]]) -> dict[str, list[Candidate]]:
        """The train/eval splits as the build writes them."""
        return splits


SOURCES: dict[str, Source] = {}


def register(cls: type[Source]) -> type[Source]:
    SOURCES[cls.name] = cls()
    return cls


def names() -> tuple[str, ...]:
    """The source names, in registry order (for CLI choices and messages)."""
    return tuple(SOURCES)


def subset_names() -> tuple[str, ...]:
    """Every `--subset` some source offers (each source checks its own)."""
    return tuple(dict.fromkeys(name for source in SOURCES.values() for name in source.subsets))


def get(name: str) -> Source:
    """The registered source `name`; SourceError listing the known names otherwise."""
    if name not in SOURCES:
        raise SourceError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[name]


@register
class Silkie(Source):
    name = "silkie"
    module = "mdpo_data.sources.silkie"
    license = "unspecified"  # VLFeedback declares no license
    citation = """@article{2023vlfeedback,
  author = {Lei Li and Zhihui Xie and Mukai Li and Shunian Chen and Peiyi Wang and Liang Chen
            and Yazheng Yang and Benyou Wang and Lingpeng Kong},
  title = {Silkie: Preference Distillation for Large Visual Language Models},
  publisher = {arXiv:2312.10665},
  year = {2023}
}"""
    uses = frozenset({"path", "seed", "pairing", "subset", "id_prefix", "image_root"})
    subsets = {"llava": "llava-"}  # the paper's setting: instructions from LLaVA-Instruct-150K


@register
class LlavaInstruct(Source):
    name = "llava-instruct"
    module = "mdpo_data.sources.llava_instruct"
    license = "cc-by-4.0"
    citation = """@inproceedings{liu2023llava,
  author = {Haotian Liu and Chunyuan Li and Qingyang Wu and Yong Jae Lee},
  title = {Visual Instruction Tuning},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year = {2023}
}"""
    uses = frozenset({"path", "image_root"})


@register
class Pairs(Source):
    name = "pairs"
    module = "mdpo_data.sources.pairs"
    uses = frozenset({"path", "image_root", "columns"})


@register
class Demo(Source):
    name = "demo"
    module = "mdpo_data.sources.demo"
    license = "apache-2.0"
    uses = frozenset({"seed", "demo_size", "first_row", "prior"})

    def after_sampling(self, config, sampled):
        """With --rejected-response the demo stands in for a gold-answer source: its own
        wrong answers are dropped, to be bootstrapped."""
        if config.rejected_response:
            return [dataclasses.replace(c, rejected=None) for c in sampled]
        return sampled

    def after_split(self, config, splits):
        """--demo-style-shortcut: a share of TRAIN pairs phrased chosen=plain, rejected=chatty.
        --demo-prior-pairs: a share of TRAIN pairs whose rejected answer is the prior's; the
        EVAL pairs alternate prior-consistent and counter-prior (a text rule fails one half)."""
        from mdpo_data.sources.demo import balanced_prior_pair, prior_pairs, style_shortcut

        if config.demo_style_shortcut:
            share = config.demo_style_shortcut
            splits = {**splits, "train": [style_shortcut(c, config.seed, share) for c in splits["train"]]}
        if config.demo_prior_pairs:
            share, prior = config.demo_prior_pairs, config.demo_prior
            splits = {**splits, "train": [prior_pairs(c, config.seed, share, prior=prior) for c in splits["train"]]}
            if "eval" in splits:
                splits["eval"] = [balanced_prior_pair(c, config.seed, i, prior=prior)
                                  for i, c in enumerate(splits["eval"])]
        return splits


# Views of the registry kept for callers that read one fact for every source.
SOURCE_NAMES = names()
LICENSES: dict[str, str] = {name: source.license for name, source in SOURCES.items()}
CITATIONS: dict[str, str] = {name: source.citation for name, source in SOURCES.items()}


def open_source(
    name: str,
    *,
    path: str | None = None,
    seed: int = 0,
    pairing: str = "all",
    subset: str | None = None,
    id_prefix: str | None = None,
    image_root: str | None = None,
    columns: dict[str, str] | None = None,
    demo_size: int = 2000,
    demo_first_row: int = 0,
    demo_prior: float = 0.0,
) -> Iterator[Candidate | Skip]:
    """Validate the options for source `name` and return its (lazy) record stream."""
    source = get(name)
    if pairing not in PAIRINGS:
        raise SourceError(f"unknown pairing {pairing!r}; choose one of {', '.join(PAIRINGS)}")
    given = {
        "path": path,
        "seed": seed,
        "pairing": pairing,
        "subset": subset,
        "id_prefix": id_prefix,
        "image_root": image_root,
        "columns": columns,
        "demo_size": demo_size,
        "first_row": demo_first_row,
        "prior": demo_prior,
    }
    defaults = {"pairing": "all", "demo_size": 2000, "first_row": 0, "prior": 0.0}
    ignored = [
        key
        for key, value in given.items()
        if key not in source.uses
        and key != "seed"
        and value is not None
        and value != defaults.get(key)
    ]
    if ignored:
        warnings.warn(f"source {name!r} ignores option(s) {', '.join(ignored)}", stacklevel=2)
    return source.stream(**{key: given[key] for key in sorted(source.uses)})
