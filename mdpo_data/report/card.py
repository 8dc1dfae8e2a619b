"""The dataset card (DIR/README.md): what a build holds, how it was made, and what to cite.

Everything comes from the build folder itself (manifest + shards), so the card can never
describe a different build. The YAML front matter is a dict dumped with `yaml.safe_dump`
(valid YAML whatever the text holds); the body is `data_cards/dataset_card.md.j2`.
"""

from __future__ import annotations

import html
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from mdpo_data.format import schema
from mdpo_data.format.manifest import Manifest, Reference, load_manifest, to_json
from mdpo_data.report.reliance import reliance_stats
from mdpo_data.format.folder import DATA, refuse_links, user_edited, write_user_file
from mdpo_data.format.shards import read_shard
from mdpo_data.sources import CITATIONS, LICENSES

CARD_NAME = "README.md"
TAGS = ["dpo", "mdpo", "preference", "multimodal", "trl", "vision"]
TASK_CATEGORIES = ["visual-question-answering"]
N_EXAMPLES = 3  # rows shown in the card
EXAMPLE_CHARS = 300  # each text is cut to this many characters

MDPO_CITATION = """@article{wang2024mdpo,
  title   = {mDPO: Conditional Preference Optimization for Multimodal Large Language Models},
  author  = {Wang, Fei and Zhou, Wenxuan and Huang, James Y. and Xu, Nan and Zhang, Sheng and
             Poon, Hoifung and Chen, Muhao},
  journal = {arXiv preprint arXiv:2406.11839},
  year    = {2024}
}"""
BPO_CITATION = """@article{pi2024bpo,
  title   = {Strengthening Multimodal Large Language Model with Bootstrapped Preference Optimization},
  author  = {Pi, Renjie and Han, Tianyang and Xiong, Wei and Zhang, Jipeng and Liu, Runtao and
             Pan, Rui and Zhang, Tong},
  journal = {arXiv preprint arXiv:2403.08730},
  year    = {2024}
}"""

# Restrictiveness of the licenses sources declare, lowest first. Anything not listed
# (including "no license declared") is treated as the most restrictive: all rights reserved.
_LICENSE_RANK = {
    **dict.fromkeys(["cc0-1.0", "pddl", "unlicense"], 0),
    **dict.fromkeys(["mit", "apache-2.0", "bsd", "bsd-2-clause", "bsd-3-clause", "cc-by-2.0",
                     "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "odc-by"], 1),
    **dict.fromkeys(["cc-by-sa-3.0", "cc-by-sa-4.0", "odbl", "gpl-3.0", "lgpl-3.0"], 2),
    **dict.fromkeys(["cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0"], 3),
    **dict.fromkeys(["cc-by-nd-4.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-3.0",
                     "cc-by-nc-nd-4.0"], 4),
}
_UNKNOWN_RANK = 5
UNSPECIFIED = "other"  # Hub license id for "no license declared" and for incompatible mixes


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


_SIZE_NAMES = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]


def size_category(n: int) -> str:
    """The Hub's `size_categories` bucket for `n` rows (n<1K, 1K<n<10K, ..., n>1T)."""
    if n < 1000:
        return "n<1K"
    for power, (lower, upper) in enumerate(zip(_SIZE_NAMES, _SIZE_NAMES[1:]), start=4):
        if n < 10**power:
            return f"{lower}<n<{upper}"
    return "n>1T"


def normalize_license(value: str | None) -> str:
    """A Hub license id: lowercase, dashes; None/empty/"unspecified" -> "other"."""
    if not value or not str(value).strip():
        return UNSPECIFIED
    text = re.sub(r"[\s_]+", "-", str(value).strip().lower())
    return UNSPECIFIED if text in ("unspecified", "unknown", "none") else text


def resolve_license(licenses: list[str | None]) -> str:
    """The most restrictive of the source licenses (a dataset inherits its sources' terms).

    Ties between different licenses of the same restrictiveness, and any license this table
    does not know, give "other": the card body then lists every source's license.
    """
    ids = {normalize_license(value) for value in licenses} or {UNSPECIFIED}
    top = max(_LICENSE_RANK.get(i, _UNKNOWN_RANK) for i in ids)
    strictest = sorted(i for i in ids if _LICENSE_RANK.get(i, _UNKNOWN_RANK) == top)
    return strictest[0] if len(strictest) == 1 else UNSPECIFIED


def uses_bpo(response_strategies: set[str], image_strategies: set[str]) -> bool:
    """True when a rejected response was bootstrapped or m_l is BPO's diffusion noise."""
    bootstrapped = any(s != "source" for s in response_strategies)
    from mdpo_data.rejected.registry import STRATEGIES

    kinds = (STRATEGIES.get(s.split(":", 1)[0].strip().lower()) for s in image_strategies)
    noise = any(kind is not None and kind.bootstrapped for kind in kinds)
    return bootstrapped or noise


def is_smoke_test(fingerprint: dict[str, Any]) -> bool:
    """True when the reference was one of `mdpo_data.demo.tiny`'s random-weight models."""
    from mdpo_data.demo import tiny

    if fingerprint.get("smoke_test") or fingerprint.get(tiny.SMOKE_TEST_FLAG):
        return True
    if fingerprint.get("model") == "tiny":  # `--ref-model tiny`, see mdpo_data.scoring.models
        return True
    text = " ".join(str(v) for v in fingerprint.values() if isinstance(v, str)).lower()
    return any(mark in text for mark in ("smoke-test", "tiny-llava", "tiny-qwen2-vl"))


def clip_text(text: str, limit: int = EXAMPLE_CHARS) -> str:
    """One line of at most `limit` characters, HTML-escaped so it cannot break the markdown."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return html.escape(text, quote=False)


def flatten(stats: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"quantiles": {"p50": x}, "no_image": None} -> {"quantiles.p50": x} (None dropped)."""
    flat = {}
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# ---------------------------------------------------------------------------------------------
# Reading the build
# ---------------------------------------------------------------------------------------------


def _split_tables(directory: Path, manifest: Manifest) -> dict[str, pa.Table]:
    """Each split's listed shards (bytes verified first) as one memory-mapped table."""
    from mdpo_data.format.integrity import verified_shards

    tables = {}
    for split in schema.SPLITS:
        files = list(verified_shards(directory, manifest, split))
        if files:
            tables[split] = pa.concat_tables([read_shard(f) for f in files])
    if not tables:
        raise FileNotFoundError(f"{directory} holds no mdpo-data shards (train-*.arrow)")
    return tables


def _distinct(tables: dict[str, pa.Table], column: str) -> set[str]:
    return {v for t in tables.values() for v in pc.unique(t[column]).to_pylist() if v is not None}


def _examples(table: pa.Table, k: int = N_EXAMPLES) -> list[dict[str, str]]:
    rows = table.select(["example_id", "prompt", "chosen", "rejected"]).slice(0, k).to_pylist()
    return [
        {
            "example_id": clip_text(row["example_id"], 80),
            "question": clip_text(schema.question_of(row["prompt"])),
            "chosen": clip_text(schema.text_of(row["chosen"])),
            "rejected": clip_text(schema.text_of(row["rejected"])),
        }
        for row in rows
    ]


def source_datasets(names: set[str], source_path: str | None) -> list[str]:
    """Hub ids the data came from: `--source-path` when it is a Hub id, else each source's HUB_ID."""
    from mdpo_data import sources
    from mdpo_data.sources.hub import looks_like_repo_id

    if source_path and looks_like_repo_id(source_path):
        return [source_path]
    found = {sources.SOURCES[name].hub_id for name in names if name in sources.SOURCES}
    return sorted(found - {None})


def _reliance(tables: dict[str, pa.Table]) -> dict[str, dict[str, Any]]:
    """Per-split image-reliance statistics, flattened for a two-column table."""
    return {split: flatten(reliance_stats(table)) for split, table in tables.items()}


def hub_data_files(splits: list[str]) -> list[dict[str, Any]]:
    """The `configs` entry matching the Hub export layout `data/{split}-*.parquet`."""
    return [{"config_name": "default",
             "data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}]


# ---------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------


def card_context(directory: str | Path) -> dict[str, Any]:
    """Everything the template shows, read from the manifest and the shards."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    tables = _split_tables(directory, manifest)
    rows = {split: table.num_rows for split, table in tables.items()}
    config = manifest.config
    names = _distinct(tables, "source") | ({config["source"]} if config.get("source") else set())
    source_licenses = {name: normalize_license(LICENSES.get(name)) for name in sorted(names)}
    image_strategies = _distinct(tables, "rejected_image_strategy")
    response_strategies = _distinct(tables, "rejected_response_strategy")

    cites = [MDPO_CITATION]
    if uses_bpo(response_strategies, image_strategies):
        cites.append(BPO_CITATION)
    cites += [CITATIONS[name] for name in sorted(names) if CITATIONS.get(name)]

    reference, scored = manifest.reference or Reference(), manifest.scored
    fingerprint = _portable(manifest.fingerprint.as_dict() if manifest.fingerprint else {})
    rejected_image = to_json(manifest.rejected_image) or {}  # the stored records, as the template shows them
    pretty = " ".join(f"MDPO preference pairs: {', '.join(sorted(names))}, rejected image "
                      f"{rejected_image.get('spec', '?')}".split())  # one line
    front = {
        "license": resolve_license(list(source_licenses.values())),
        "pretty_name": pretty,
        "task_categories": TASK_CATEGORIES,
        "tags": TAGS,
        "size_categories": [size_category(sum(rows.values()))],
        "source_datasets": source_datasets(names, config.get("source_path")),
        "configs": hub_data_files(list(rows)),
    }
    if not front["source_datasets"]:
        del front["source_datasets"]
    return {
        "front_matter": yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=100),
        "pretty_name": html.escape(pretty, quote=False),
        "license": front["license"],
        "source_licenses": source_licenses,
        "command": manifest.command,
        "config_yaml": yaml.safe_dump(config, sort_keys=True, allow_unicode=True).strip(),
        "rows": rows,
        "total_rows": sum(rows.values()),
        "counts": to_json(manifest.counts),
        "rejected_image": rejected_image,
        "image_strategies": sorted(image_strategies),
        "response_strategies": sorted(response_strategies),
        "scored": scored,
        "fingerprint_yaml": yaml.safe_dump(fingerprint, sort_keys=True, allow_unicode=True).strip(),
        "smoke_test": scored and is_smoke_test(fingerprint),
        "reference_skipped": reference.skipped,
        "scorer_dropped": sum(reference.skipped.values()) if scored else 0,
        "reference_columns": reference.columns,
        "reference_batch_size": reference.batch_size,
        "reliance": _reliance(tables) if scored else None,
        "examples": _examples(tables.get("train", next(iter(tables.values())))),
        "citations": cites,
        "versions": manifest.versions,
    }


def _portable(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The scorer's fingerprint with local absolute paths cut to their name: a card is
    published, and a path on the builder's machine means nothing (and may say too much)."""
    from mdpo_data.config.build import portable_path

    return {k: portable_path(v) if isinstance(v, str) else v for k, v in fingerprint.items()}


def _template() -> jinja2.Template:
    text = resources.files("data_cards").joinpath("dataset_card.md.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    env.filters["inline"] = lambda v: clip_text(v, 10**6)  # build strings, kept on one line
    return env.from_string(text)


def render_card(directory: str | Path) -> str:
    """The README.md text (YAML front matter + markdown body) for a build folder."""
    return _template().render(**card_context(directory))


class EditedCard(ValueError):
    """DIR/README.md is not the card we last wrote (a hand edit): it is kept."""


def write_card(directory: str | Path, force: bool = False) -> Path:
    """Write DIR/README.md atomically and record its hash; returns its path.

    A README whose bytes changed since we wrote it (or that we never wrote) is the user's:
    EditedCard is raised and the file is kept, unless `force` (`mdpo-data card --force`)."""
    directory = Path(directory)
    path = directory / CARD_NAME
    if not force and user_edited(directory, CARD_NAME):
        raise EditedCard(f"{path} was edited since mdpo-data wrote it (or is not ours): kept as is; "
                         f"run `mdpo-data card {directory} --force` to regenerate it")
    refuse_links(directory, DATA)
    write_user_file(directory, CARD_NAME, render_card(directory).encode("utf-8"))
    return path
