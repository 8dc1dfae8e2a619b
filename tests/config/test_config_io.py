"""One config path for both commands (mdpo_data.config.options): flags, YAML keys and help come from
the dataclass fields; unknown YAML keys name the closest known key; precedence is defaults <
YAML < flags given (click's parameter sources, so a flag typed at its default value still wins)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mdpo_data.config import options as config_io
from mdpo_data.config.build import BuildConfig
from mdpo_data.cli import SCORE_OPTIONS
from mdpo_data.cli import main as mdpo_data
from mdpo_data.config.pipeline import PipelineError, build_config, load_pipeline, merge, runtime_config
from mdpo_data.config.runtime import Runtime
from mdpo_train.cli import main as mdpo_train
from mdpo_train.config import ConfigError, TrainConfig, load_config


def one_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def options_of(command, *args) -> dict[str, object]:
    """The click options of a command (made from the dataclasses on first use)."""
    ctx = command.make_context(command.name or "x", list(args), resilient_parsing=True)
    command.get_params(ctx)
    return {p.name: p for p in command.params}  # without click's own --help


# ------------------------------------------------------------------ generated options


@pytest.mark.parametrize("command, classes, hand_written", [
    (mdpo_data.commands["build"], (BuildConfig, Runtime), {"pipeline", "quiet"}),
    (mdpo_train, (TrainConfig,), {"config_path", "version"}),
])
def test_every_field_is_a_flag_with_help_and_nothing_else(command, classes, hand_written):
    params = {name: p for name, p in options_of(command).items() if name not in hand_written}
    fields = {f.name: f for cls in classes for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}
    assert set(params) == set(fields)
    for name, field in fields.items():
        assert config_io.help_of(field).strip(), f"{name} has no help text"
        assert params[name].help.startswith(config_io.help_of(field))
        assert config_io.flag(field) in params[name].opts
    help_text = CliRunner().invoke(command, ["--help"]).output
    for field in fields.values():
        assert config_io.flag(field) in help_text


def test_strategy_forms_in_help_and_errors_come_from_the_registries(monkeypatch):
    """A strategy registered in `rejected.registry.STRATEGIES` (or `bpo.spec.RESPONSE_KINDS`)
    is listed by --help and by a bad spec's error, with no other file to edit."""
    from mdpo_data.bpo import spec as bpo_spec
    from mdpo_data.rejected import registry

    class Mirror(registry.Strategy):
        name, form, usage = "mirror", "mirror", "mirror (left-right flip)"

    class Echo(bpo_spec.ResponseKind):
        name, form, usage = "echo", "echo", "echo (the question repeated)"

    monkeypatch.setitem(registry.STRATEGIES, "mirror", Mirror)
    monkeypatch.setitem(bpo_spec.RESPONSE_KINDS, "echo", Echo())
    fields = config_io.fields(BuildConfig)
    params = {name: config_io.click_option(BuildConfig, fields[name]) for name in ("rejected", "rejected_response")}
    assert params["rejected"].help.startswith("Rejected image m_l: crop:LO-HI | swap | moco | noise:T | "
                                              "albumentations:PIPELINE.yaml | mirror.")
    assert "weaken[:T] | inject | echo." in params["rejected_response"].help
    with pytest.raises(registry.SpecError, match=r"mirror \(left-right flip\)$"):
        registry.parse_spec("blur")
    with pytest.raises(ValueError, match=r"echo \(the question repeated\)$"):
        bpo_spec.parse_response_strategy("shout")


def test_choices_and_ranges_come_from_the_fields():
    params = options_of(mdpo_data.commands["build"])
    from mdpo_data.sources import SOURCE_NAMES

    assert params["source"].metavar == "[" + "|".join(SOURCE_NAMES) + "]"
    assert "[x>=1]" in params["workers"].help and "[x>=1]" in params["n"].help
    assert params["dtype"].default == Runtime().dtype == "auto"
    score = options_of(mdpo_data.commands["score"], ".", "--ref-model", "x")
    assert set(SCORE_OPTIONS) <= set(score) and score["ref_model"].required
    assert {"workers", "out", "overwrite"}.isdisjoint(score)


def test_choices_and_bounds_are_checked_once_with_every_problem_listed():
    """click only parses types; the fields' choices and bounds are checked in one place, so a
    command line with several mistakes hears about all of them."""
    result = CliRunner().invoke(mdpo_data, ["build", "--source", "nope", "--n", "0", "--workers", "0"])
    assert result.exit_code == 2
    for problem in ("--source: 'nope' is not one of", "--n: must be at least 1, got 0",
                    "--workers: must be at least 1, got 0"):
        assert problem in result.output


def test_float_bounds_refuse_nan_and_open_ends():
    meta = {"min": 0, "below": 1}
    assert config_io.range_problem(meta, 0.0) is None and config_io.range_problem(meta, 0.999) is None
    assert config_io.range_problem(meta, 1.0) == "must be in [0, 1), got 1.0"
    assert config_io.range_problem(meta, float("nan")) == "must be finite, got nan"
    assert config_io.range_problem({"above": 0}, 0) == "must be > 0, got 0"
    assert config_io.range_problem({"max": 2}, 3) == "must be at most 2, got 3"


def test_the_cli_module_stays_light_for_spawned_workers():
    """Workers re-import the CLI module: the options (and BuildConfig's module, which imports
    datasets) are made on first use, not at import."""
    code = "import sys, mdpo_data.cli; print('mdpo_data.build.stage' in sys.modules, 'datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ------------------------------------------------------------------ unknown keys: the closest known one


def test_build_yaml_names_the_closest_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("source: demo\nshard_sise: 10\nrefmodel: tiny\nzzz: 1\n")
    with pytest.raises(PipelineError) as error:
        load_pipeline(path)
    message = str(error.value)
    assert "\n" not in message and "unknown key(s) refmodel, shard_sise, zzz" in message
    assert "shard_sise: did you mean 'shard_size'?" in message and "refmodel: did you mean 'ref_model'?" in message
    assert "zzz: no similar key" in message
    code_output = CliRunner().invoke(mdpo_data, ["build", "--pipeline", str(path), "--out", str(tmp_path / "o")])
    assert code_output.exit_code == 2 and "did you mean 'shard_size'?" in one_error(code_output.output)


def test_train_yaml_names_the_closest_key(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("shards: d\noutput-dir: r\nlr_schedular: linear\nnum_train_epochs: 2\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.problems == ["lr_schedular: unknown key; did you mean 'lr_scheduler'?",
                                    "num_train_epochs: unknown key; did you mean 'epochs'?"]
    result = CliRunner().invoke(mdpo_train, ["--config", str(path)])
    assert result.exit_code == 2 and "did you mean 'lr_scheduler'?" in result.output


def test_both_commands_read_yaml_the_same_strict_way(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("description: caf\xe9\n".encode("latin-1"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    for name, problem in (("latin1.yaml", "is not UTF-8 text"), ("list.yaml", "must be a mapping")):
        with pytest.raises(PipelineError, match=problem):
            load_pipeline(tmp_path / name)
        with pytest.raises(ConfigError, match=problem):
            load_config(tmp_path / name, {"shards": "d", "output_dir": "r"})


# ------------------------------------------------------------------ precedence


def test_build_flags_override_yaml_which_overrides_defaults(tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("source: demo\nn: 6\ndemo-size: 20\nseed: 5\nrejected: moco\nworkers: 2\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(mdpo_data, ["build", "--seed", "0", "--pipeline", str(pipeline),
                                            "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    config = manifest["config"]
    assert config["seed"] == 0  # a flag typed at its default value still beats the file
    assert (config["n"], config["demo_size"], config["rejected"]) == (6, 20, "moco")  # from the file
    assert config["shard_size"] == BuildConfig().shard_size  # the default
    # the recorded command is what was typed, in order, minus what cannot change the output
    assert manifest["command"] == f"mdpo-data build --seed 0 --pipeline {pipeline.name} --out OUT"


def test_merge_then_validate_once():
    options = merge({"n": 10, "workers": 3, "dtype": "float16"}, {"n": 12, "workers": None})
    assert build_config(options).n == 12
    assert runtime_config(options) == Runtime(workers=3, dtype="float16")
    with pytest.raises(PipelineError) as error:
        build_config({"n": 0, "shard_size": "big", "workers": 0, "dtype": "float64", "eval_fraction": 2})
    message = str(error.value)
    assert "\n" not in message
    for problem in ("--n: must be at least 1, got 0", "--shard-size: expected a whole number, got 'big'",
                    "--workers: must be at least 1, got 0", "--dtype: 'float64' is not one of"):
        assert problem in message


def test_train_flag_at_its_default_beats_the_yaml(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("shards: d\noutput_dir: r\nlr: 0.001\nprogress: false\nbeta: 0.5\n")
    ctx = mdpo_train.make_context("mdpo-train", ["--config", str(path), "--lr", "1e-5", "--progress"])
    flags = {k: v for k, v in config_io.given(ctx).items() if k != "config_path"}
    assert flags == {"lr": 1e-5, "progress": True}
    config = load_config(path, flags)
    assert (config.lr, config.progress, config.beta, config.epochs) == (1e-5, True, 0.5, TrainConfig().epochs)


# ------------------------------------------------------------------ typed runtime errors: one line


@pytest.mark.parametrize("args, yaml_text, expected", [
    (["--workers", "0"], None, "--workers: must be at least 1, got 0"),  # same words as the YAML
    ([], "workers: 0\n", "--workers: must be at least 1, got 0"),
    ([], "max-length: two\n", "--max-length: expected a whole number, got 'two'"),
    ([], "overwrite: yes please\n", "--overwrite: expected true/false"),
])
def test_a_bad_runtime_value_is_one_line(tmp_path, args, yaml_text, expected):
    if yaml_text:
        (tmp_path / "p.yaml").write_text(yaml_text)
        args = [*args, "--pipeline", str(tmp_path / "p.yaml")]
    result = CliRunner().invoke(mdpo_data, ["build", "--source", "demo", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and expected in one_error(result.output)
    assert not (tmp_path / "o").exists()
