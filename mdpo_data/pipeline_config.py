"""Pipeline YAML files: the same options as `mdpo-data build` flags, validated before any work.

Precedence: BuildConfig defaults < the YAML file < command-line flags. Keys may use dashes
(as on the command line) or underscores. Unknown keys are errors, all reported at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from mdpo_data.build import BuildConfig

# Options that change how the build runs but not what it writes; allowed in a pipeline file.
RUNTIME_KEYS = {
    "out", "workers", "overwrite", "ref_model", "dtype", "batch_size", "device", "max_length",
    "no_image_logps", "trust_remote_code", "revision",
}
BUILD_KEYS = {f.name for f in dataclasses.fields(BuildConfig)}


class PipelineError(ValueError):
    pass


def normalize_key(key: str) -> str:
    return key.strip().replace("-", "_")


def load_pipeline(path: str | Path) -> dict[str, Any]:
    """Read and check a pipeline YAML; returns {option: value} with underscore keys."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"pipeline file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise PipelineError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path} must be a mapping of option: value, got {type(data).__name__}")
    options = {normalize_key(str(k)): v for k, v in data.items()}
    options.pop("description", None)  # free text for people
    unknown = sorted(set(options) - BUILD_KEYS - RUNTIME_KEYS)
    if unknown:
        valid = ", ".join(sorted(BUILD_KEYS | RUNTIME_KEYS))
        raise PipelineError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {valid}")
    return options


def merge(pipeline: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line (not None) override the pipeline file."""
    merged = dict(pipeline)
    merged.update({k: v for k, v in flags.items() if v is not None})
    return merged


def build_config(options: dict[str, Any]) -> BuildConfig:
    """The BuildConfig part of merged options, type-checked with errors collected."""
    fields = {f.name: f for f in dataclasses.fields(BuildConfig)}
    values, problems = {}, []
    for name, value in options.items():
        if name not in fields or value is None:
            continue
        default = fields[name].default
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and (isinstance(default, bool) or default is None)
        elif isinstance(default, int):
            ok = isinstance(value, int)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float))
            value = float(value) if ok else value
        elif name == "columns":
            ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        else:
            ok = isinstance(value, (str, int, float))
            value = str(value) if ok else value
        if not ok:
            problems.append(f"{name.replace('_', '-')}: bad value {value!r}")
        values[name] = value
    if problems:
        raise PipelineError("; ".join(problems))
    config = BuildConfig(**values)
    if config.n < 1:
        problems.append(f"n: must be at least 1, got {config.n}")
    if config.shard_size < 1:
        problems.append(f"shard-size: must be at least 1, got {config.shard_size}")
    if not 0.0 <= config.eval_fraction < 1.0:
        problems.append(f"eval-fraction: must be in [0, 1), got {config.eval_fraction}")
    if not 0.0 <= config.demo_style_shortcut <= 1.0:
        problems.append(f"demo-style-shortcut: must be in [0, 1], got {config.demo_style_shortcut}")
    if config.max_pixels < 1:
        problems.append(f"max-pixels: must be positive, got {config.max_pixels}")
    if problems:
        raise PipelineError("; ".join(problems))
    return config
