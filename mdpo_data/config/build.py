"""Build settings: every option that shapes a build's output bytes, and how it is recorded.

`BuildConfig`'s hash (`key`) keys the resume markers; its `public` form is what the manifest
records (absolute local paths cut to their name, since a manifest is published as is).
Runtime-only options (workers, device, ...) live in `mdpo_data.config.runtime`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdpo_data.config.options import described, names_from, setting
from mdpo_data.format import schema
from mdpo_data.format.versions import library_versions


class BuildError(ValueError):
    """A problem with the build's configuration or output folder, reported before any work."""


def _subset_names() -> tuple[str, ...]:
    from mdpo_data.sources import subset_names

    return subset_names()


def _parse_rejected(spec: str):
    from mdpo_data.rejected.registry import parse_spec

    return parse_spec(spec)


def _parse_rejected_response(spec: str):
    from mdpo_data.bpo.spec import parse_response_strategy

    return parse_response_strategy(spec)


@dataclass
class BuildConfig:
    """Every option that shapes the output bytes. Runtime-only options live in `Runtime`.
    Each field is also a `mdpo-data build` flag and a pipeline YAML key (`config_io.setting`)."""

    source: str = setting("demo", "Where pairs come from.", choices=names_from("mdpo_data.sources", "SOURCES"))
    n: int = setting(1000, "Pairs to sample.", min=1)
    rejected: str = setting("crop:0-0.2", described("Rejected image m_l: {}.", "mdpo_data.rejected.registry"),
                            check=_parse_rejected)
    seed: int = setting(0, "Build seed: same seed + config = byte-identical output.")
    source_path: str | None = setting(None, "Local file/folder of the source (default: its Hub id).")
    image_root: str | None = setting(None, "Folder that relative image paths resolve under (never escaped).")
    pairing: str = setting("all", "Silkie pairing rule.", choices=names_from("mdpo_data.sources", "PAIRINGS"),
                           shown="all: every pair of completions, as VLFeedback's authors pair it")
    subset: str | None = setting(None, "Silkie: keep ids starting with llava- (the paper).", choices=_subset_names)
    id_prefix: str | None = setting(None, "Silkie: keep ids with this prefix.")
    columns: dict[str, str] | None = setting(
        None, "pairs: map columns, e.g. image=img,question=q,chosen=good,rejected=bad.")
    demo_size: int = setting(2000, "demo: pairs in the built-in pool.", min=1)
    demo_first_row: int = setting(0, "demo: first row of the pool (the demo model trains on other rows).")
    demo_style_shortcut: float = setting(0.0, "demo: share of train pairs whose chosen answer is plain and "
                                         "rejected chatty (a text-only cue).", min=0, max=1)
    demo_prior: float = setting(0.0, "demo: share of scene groups in their shape's usual colour (circles red, "
                                "squares blue, triangles green): a language prior. 0: no prior.", min=0, max=1)
    demo_prior_pairs: float = setting(0.0, "demo: share of train pairs on counter-prior scenes whose rejected "
                                      "answer is the prior's; eval pairs balanced consistent/counter.", min=0, max=1)
    eval_fraction: float = setting(0.0, "Share of sampled pairs put in an eval split.", min=0, below=1)
    shard_size: int = setting(1000, "Rows per shard.", min=1)
    max_pixels: int = setting(40_000_000, "Refuse larger images (decompression bombs).", min=1)
    rejected_response: str | None = setting(
        None, described("Bootstrap missing rejected answers (BPO): {}.", "mdpo_data.bpo.spec"),
        check=_parse_rejected_response)
    rejected_response_model: str | None = setting(None, "Model that generates weakened answers.",
                                                  shown="--ref-model")
    inject_model: str | None = setting(None, "Text LLM for --rejected-response inject.")
    rejected_response_max_new_tokens: int = setting(256, "Longer bootstrapped answers are counted skips.", min=1)
    noise_input: str | None = setting(None, "`noise`: the model's input space (ModelInput JSON; None = "
                                      "LLaVA-1.5's), set from --ref-model.", cli=False)
    system_prompt: str = setting("auto", "System message in each prompt: auto | none | TEXT.",
                                 shown="auto: the source's own, else the --ref-model family's training "
                                 "prompt (LLaVA-1.5: Vicuna v1), else none")
    system_prompt_family: str | None = setting(
        None, "The model family `auto` falls back to (set from --ref-model).", cli=False,
        choices=names_from("mdpo_data.build.system_prompts", "FAMILIES"))

    def key(self) -> str:
        """Hash of the config and of the libraries whose output bytes it fixes.

        Local paths enter as their portable form (see `public`): where the source lives is
        not what it holds; the shards' markers fingerprint the rows themselves. A pipeline
        file (`albumentations:FILE`) enters by its content.
        """
        config = self.public()
        strategy = self.rejected_strategy()
        if strategy.content_sha256():  # a file enters by its content only, wherever it lives
            config["rejected"] = strategy.name
        payload = {
            "config": config,
            "format": schema.FORMAT_VERSION,
            "libs": library_versions(*self.libraries(strategy)),
        }
        if strategy.content_sha256():
            payload["pipeline"] = strategy.content_sha256()
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def libraries(self, strategy=None) -> tuple[str, ...]:
        """The libraries a build with this config really calls to make its bytes: the m_l
        strategy's (PIL + numpy for the built-ins; a pipeline adds albumentations and OpenCV);
        BPO generation adds torch. Upgrading anything else keeps resume markers valid."""
        names = list((strategy or self.rejected_strategy()).libraries())
        if self.rejected_response:
            names.append("torch")
        return tuple(names)

    def rejected_strategy(self):
        """The parsed `--rejected` strategy (a pipeline file is read and checked here)."""
        from mdpo_data.rejected.registry import SpecError, parse_spec

        try:
            return parse_spec(self.rejected)
        except SpecError as error:
            raise BuildError(str(error)) from None

    def public(self) -> dict[str, Any]:
        """The config as the manifest records it: absolute local paths cut to their name."""
        values = dataclasses.asdict(self)
        for name in PATH_OPTIONS:
            values[name] = portable_path(values[name])
        values["rejected"] = portable_spec(self.rejected)
        for name, default in RECORDED_WHEN_SET.items():
            if values[name] == default:
                del values[name]
        return values


PATH_OPTIONS = ("source_path", "image_root", "rejected_response_model", "inject_model")
# Options added after builds were published: recorded only when set, so a build without them
# keeps its manifest and config key byte for byte.
RECORDED_WHEN_SET = {"demo_prior": 0.0, "demo_prior_pairs": 0.0}


def portable_path(value: str | None) -> str | None:
    """An absolute local path -> its last component (a manifest is published as is)."""
    if isinstance(value, str) and Path(value).is_absolute():
        return Path(value).name or value
    return value


def portable_spec(spec: str) -> str:
    """A `--rejected` spec as recorded: a strategy that names a local file keeps only its name
    (`albumentations:/any/where/pipe.yaml` -> `albumentations:pipe.yaml`; the content is recorded
    as `pipeline_sha256`); other specs unchanged."""
    from mdpo_data.rejected.registry import STRATEGIES

    name, sep, arg = spec.strip().partition(":")
    kind = STRATEGIES.get(name.strip().lower())
    return kind.portable_spec(spec, arg.strip()) if kind is not None and sep else spec


def portable_text(text: str, roots: list[str]) -> str:
    """`text` with paths under `roots` made relative to them and other absolute paths cut to
    their file name (skip examples quote source locations)."""
    for root in sorted({str(Path(r).resolve()) for r in roots if r}, key=len, reverse=True):
        text = text.replace(root.rstrip("/") + "/", "")
    return re.sub(r"(?<![\w.])/(?:[^\s:'\"/]+/)*([^\s:'\"/]+)", r"\1", text)
