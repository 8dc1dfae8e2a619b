"""`mdpo-data build` settings: BuildConfig (what the build writes) + Runtime (how it runs).

One path for flags and pipeline YAML files: the fields of both dataclasses are the flags and the
YAML keys (`mdpo_data.config.options`). Precedence: field defaults < the YAML file < the flags
given. Keys may use dashes or underscores; unknown keys are errors naming the closest known
key; every problem is reported at once, in one line, before any work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mdpo_data.config import options as config_io
from mdpo_data.config.build import BuildConfig
from mdpo_data.config.runtime import Runtime

BUILD_KEYS = set(config_io.fields(BuildConfig))
RUNTIME_KEYS = set(config_io.fields(Runtime))  # how the build runs; allowed in a pipeline file


class PipelineError(ValueError):
    pass


def load_pipeline(path: str | Path) -> dict[str, Any]:
    """Read and check a pipeline YAML; returns {option: value} with underscore keys."""
    try:
        options = config_io.read_yaml(path, "pipeline")
    except config_io.ConfigFileError as error:
        raise PipelineError(str(error)) from None
    unknown = config_io.unknown_keys(options, BUILD_KEYS | RUNTIME_KEYS)
    if unknown:
        hints = "; ".join(config_io.suggestion(name, close) for name, close in unknown.items())
        valid = ", ".join(sorted(BUILD_KEYS | RUNTIME_KEYS))
        raise PipelineError(f"{path}: unknown key(s) {', '.join(unknown)} ({hints}); valid keys: {valid}")
    return options


def merge(pipeline: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The flags given on the command line (not None) override the pipeline file."""
    merged = dict(pipeline)
    merged.update({config_io.normalize_key(k): v for k, v in flags.items() if v is not None})
    return merged


def runtime_problems(options: dict[str, Any]) -> list[str]:
    """Type and range problems of the runtime options (workers >= 1, a known dtype, ...)."""
    return config_io.check_fields(Runtime, _given(options))[1]


def runtime_config(options: dict[str, Any]) -> Runtime:
    """The Runtime part of merged options; raises PipelineError naming every problem."""
    values, problems = config_io.check_fields(Runtime, _given(options))
    if problems:
        raise PipelineError("; ".join(problems))
    return Runtime(**values)


def build_config(options: dict[str, Any]) -> BuildConfig:
    """The BuildConfig part of merged options, checked once with every problem collected
    (the runtime options' too, so one message lists all)."""
    values, problems = config_io.check_fields(BuildConfig, _given(options), scalars_as_text=True)
    problems += runtime_problems(options)
    if problems:
        raise PipelineError("; ".join(problems))
    config = BuildConfig(**values)
    problems = _value_problems(config)
    if problems:
        raise PipelineError("; ".join(problems))
    return config


def settings(options: dict[str, Any], model_input: Callable[[Runtime], str] | None = None
             ) -> tuple[BuildConfig, Runtime]:
    """Merged options -> (BuildConfig, Runtime), every problem of both in one error, with what
    --ref-model implies filled in (`implied`)."""
    config = build_config(options)
    runtime = runtime_config(options)
    return implied(config, runtime, model_input), runtime


def implied(config: BuildConfig, runtime: Runtime,
            model_input: Callable[[Runtime], str] | None = None) -> BuildConfig:
    """What --ref-model implies for the output, as a new config (recorded in the build key):
    BPO generates with the reference model unless told otherwise, `--system-prompt auto` falls
    back to that model family's training prompt, and `--rejected noise:T` works in that model's
    input space (`model_input(runtime)`: the ModelInput JSON of its image processor)."""
    changes: dict[str, Any] = {}
    if model_input is not None and needs_model_input(config, runtime):
        changes["noise_input"] = model_input(runtime)
    model = config.rejected_response_model
    if config.rejected_response and not model:
        model = changes["rejected_response_model"] = runtime.ref_model
    if config.system_prompt == "auto" and not config.system_prompt_family:
        from mdpo_data.build.system_prompts import model_family

        changes["system_prompt_family"] = model_family(model or runtime.ref_model)
    return dataclasses.replace(config, **changes) if changes else config


def needs_model_input(config: BuildConfig, runtime: Runtime) -> bool:
    """A strategy drawn in the model's input space (`noise:T`) with a --ref-model to take it from."""
    if config.noise_input or not runtime.ref_model:
        return False
    from mdpo_data.rejected.registry import STRATEGIES

    kind = STRATEGIES.get(config.rejected.strip().partition(":")[0].strip().lower())
    return kind is not None and kind.needs_model_input


def problems(config: BuildConfig, runtime: Runtime) -> list[str]:
    """Every problem of settings made in code (the Python API's `run_build`): the same declared
    checks (types, ranges, choices, spec parsers) the flags and YAML files get."""
    found = config_io.check_fields(BuildConfig, _given(dataclasses.asdict(config)))[1]
    found += config_io.check_fields(Runtime, _given(dataclasses.asdict(runtime)))[1]
    return found + (_value_problems(config) if not found else [])


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """A null value (`key: ~`, a flag not given) means the default."""
    return {k: v for k, v in options.items() if v is not None}


def _value_problems(config: BuildConfig) -> list[str]:
    """Problems no field type or range can say."""
    problems = []
    if not config.system_prompt.strip():
        problems.append("--system-prompt: expected auto, none or a non-empty text")
    return problems
