"""Data sources: each turns one published data set into a stream of `Candidate | Skip`.

    silkie          VLFeedback (jsonl + merged_images zip/folder, or parquet), paired by ratings
    llava-instruct  LLaVA-Instruct-150K gold answers (rejected=None: bootstrapped later)
    pairs           any pairwise set: mDPO json, RLAIF-V, TRL, HA-DPO, POVID, or a column map
    demo            built-in synthetic shapes, no files, no network

`open_source` validates the configuration eagerly (a `SourceError` naming the option and
the fix, before anything is read) and returns a lazy iterator. Candidates are text only:
images stay behind an `ImageRef` until the sampled rows are materialised. Submodules are
imported on use so that `import mdpo_data.sources` stays cheap.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mdpo_data.records import Candidate, Skip

SOURCE_NAMES = ("silkie", "llava-instruct", "pairs", "demo")
PAIRINGS = ("best-worst", "all", "best-random")


class SourceError(ValueError):
    """A source configuration problem (missing path, bad column map, unknown pairing)."""


LICENSES: dict[str, str] = {
    "silkie": "unspecified",  # VLFeedback declares no license
    "llava-instruct": "cc-by-4.0",
    "pairs": "unspecified",  # user data: the card asks the user to fill it in
    "demo": "apache-2.0",
}

CITATIONS: dict[str, str] = {
    "silkie": """@article{2023vlfeedback,
  author = {Lei Li and Zhihui Xie and Mukai Li and Shunian Chen and Peiyi Wang and Liang Chen
            and Yazheng Yang and Benyou Wang and Lingpeng Kong},
  title = {Silkie: Preference Distillation for Large Visual Language Models},
  publisher = {arXiv:2312.10665},
  year = {2023}
}""",
    "llava-instruct": """@inproceedings{liu2023llava,
  author = {Haotian Liu and Chunyuan Li and Qingyang Wu and Yong Jae Lee},
  title = {Visual Instruction Tuning},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year = {2023}
}""",
    "pairs": "",
    "demo": "",
}

_MODULES = {
    "silkie": "mdpo_data.sources.silkie",
    "llava-instruct": "mdpo_data.sources.llava_instruct",
    "pairs": "mdpo_data.sources.pairs",
    "demo": "mdpo_data.sources.demo",
}

# Options each source reads; others are ignored, with a warning when set (the build seed is
# global, so it never warns).
_USES = {
    "silkie": {"path", "seed", "pairing", "subset", "id_prefix", "image_root"},
    "llava-instruct": {"path", "image_root"},
    "pairs": {"path", "image_root", "columns"},
    "demo": {"seed", "demo_size", "first_row"},
}


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
) -> Iterator[Candidate | Skip]:
    """Validate the options for source `name` and return its (lazy) record stream."""
    if name not in SOURCE_NAMES:
        raise SourceError(f"unknown source {name!r}; choose one of {', '.join(SOURCE_NAMES)}")
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
    }
    defaults = {"pairing": "all", "demo_size": 2000, "first_row": 0}
    ignored = [
        key
        for key, value in given.items()
        if key not in _USES[name]
        and key != "seed"
        and value is not None
        and value != defaults.get(key)
    ]
    if ignored:
        warnings.warn(f"source {name!r} ignores option(s) {', '.join(ignored)}", stacklevel=2)
    module = importlib.import_module(_MODULES[name])
    return module.stream(**{key: given[key] for key in sorted(_USES[name])})
