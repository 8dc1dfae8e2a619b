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
from mdpo_data.system_prompts import FAMILIES

# Options that change how the build runs but not what it writes; allowed in a pipeline file.
RUNTIME_KEYS = {
    "out", "workers", "overwrite", "ref_model", "dtype", "batch_size", "device", "max_length",
    "no_image_logps", "trust_remote_code", "revision",
}
BUILD_KEYS = {f.name for f in dataclasses.fields(BuildConfig)}
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Runtime option -> (type, smallest value or allowed values): checked where they are parsed.
RUNTIME_TYPES: dict[str, tuple[type, Any]] = {
    "out": (str, None), "workers": (int, 1), "overwrite": (bool, None), "ref_model": (str, None),
    "dtype": (str, DTYPES), "batch_size": (int, 1), "device": (str, None),
    "max_length": (int, 1), "no_image_logps": (bool, None), "trust_remote_code": (bool, None),
    "revision": (str, None),
}


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
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as error:
        raise PipelineError(f"{path} is not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise PipelineError(f"pipeline file {path} cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        message = " ".join(str(error).split())
        raise PipelineError(f"{path} is not valid YAML: {message}") from None
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


def runtime_problems(options: dict[str, Any]) -> list[str]:
    """Type and range problems of the runtime options (workers >= 1, a known dtype, ...)."""
    problems = []
    for name, (kind, rule) in RUNTIME_TYPES.items():
        value = options.get(name)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{flag}: expected a whole number, got {value!r}")
        elif kind is not int and not isinstance(value, kind):
            problems.append(f"{flag}: expected {kind.__name__}, got {value!r}")
        elif kind is int and value < rule:
            problems.append(f"{flag}: must be at least {rule}, got {value}")
        elif isinstance(rule, tuple) and value not in rule:
            problems.append(f"{flag}: {value!r} is not one of {', '.join(rule)}")
    return problems


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
    problems += runtime_problems(options)
    if problems:
        raise PipelineError("; ".join(problems))
    config = BuildConfig(**values)
    if config.n < 1:
        problems.append(f"n: must be at least 1, got {config.n}")
    if config.shard_size < 1:
        problems.append(f"shard-size: must be at least 1, got {config.shard_size}")
    if not 0.0 <= config.eval_fraction < 1.0:
        problems.append(f"eval-fraction: must be in [0, 1), got {config.eval_fraction}")
    if not config.system_prompt.strip():
        problems.append("system-prompt: expected auto, none or a non-empty text")
    if config.system_prompt_family is not None and config.system_prompt_family not in FAMILIES:
        problems.append(f"system-prompt-family: unknown {config.system_prompt_family!r}; known: "
                        f"{', '.join(FAMILIES)}")
    if config.rejected_response_max_new_tokens < 1:
        problems.append("rejected-response-max-new-tokens: must be at least 1, got "
                        f"{config.rejected_response_max_new_tokens}")
    if config.demo_size < 1:
        problems.append(f"demo-size: must be at least 1, got {config.demo_size}")
    if not 0.0 <= config.demo_style_shortcut <= 1.0:
        problems.append(f"demo-style-shortcut: must be in [0, 1], got {config.demo_style_shortcut}")
    if config.max_pixels < 1:
        problems.append(f"max-pixels: must be positive, got {config.max_pixels}")
    if problems:
        raise PipelineError("; ".join(problems))
    return config
