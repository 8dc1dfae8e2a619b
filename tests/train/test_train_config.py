"""Config: YAML + flags, unknown keys rejected, every problem reported at once, before any model
loads; every shipped pipelines/train_*.yaml validates; the CLI exits 2 with the whole list."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mdpo_train.cli import main
from mdpo_train.config import ConfigError, TrainConfig, load_config
from mdpo_train.loop import MDPORecipe

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
TRAIN_YAMLS = sorted(PIPELINES.glob("train_*.yaml"))


def test_defaults_follow_the_paper():
    c = TrainConfig()
    assert (c.epochs, c.global_batch_size, c.lr, c.lr_scheduler, c.warmup_ratio) == (3, 32, 1e-5, "cosine", 0.1)
    assert (c.beta, c.delta, c.weight_decay, c.adam_beta2) == (0.1, 0.0, 0.05, 0.98)
    assert (c.finetune, c.lora_r, c.lora_alpha, c.lora_dropout, c.loss) == ("lora", 64, 128, 0.05, "mdpo")


def test_flags_override_yaml_and_dashes_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("shards: data\noutput-dir: run\nlr: 0.001\nbeta: 0.5\nloss_weights: {conditional: 2}\n")
    c = load_config(path, {"lr": 0.01, "beta": None, "lora-target": "q_proj,v_proj"})
    assert c.lr == 0.01 and c.beta == 0.5  # None means "flag not given"
    assert c.loss_weights == {"conditional": 2.0}
    assert c.lora_target == ["q_proj", "v_proj"]


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("shards: d\noutput_dir: r\nlearning_rate: 0.1\nbeta: high\nloss: ipo\n"
                    "warmup_ratio: 1.5\nglobal_batch_size: 30\nloss_weights: {hinge: 1}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, {"dtype": "int8"})
    problems = "\n".join(error.value.problems)
    assert "learning_rate: unknown key" in problems and "'lr'" in problems  # with a suggestion
    assert "--beta: expected a number, got 'high'" in problems
    assert "--loss: 'ipo' is not one of" in problems
    assert "--warmup-ratio: must be in [0, 1)" in problems
    assert "--global-batch-size 30 is not a multiple of --per-device-batch-size 4" in problems
    assert "unknown term 'hinge'" in problems
    assert "--dtype: 'int8'" in problems
    assert len(error.value.problems) == 7


def test_required_keys_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="--shards: required"):
        load_config(None, {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, {"shards": "d", "output_dir": "r"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", {"shards": "d", "output_dir": "r"})


def test_recipe_init_reports_data_and_model_problems_together(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    c = load_config(None, {"shards": str(data), "output_dir": str(tmp_path / "run"), "report_to": "wandb"})
    with pytest.raises(ConfigError) as error:
        MDPORecipe(c)
    problems = "\n".join(error.value.problems)
    assert "has no manifest.json" in problems
    assert "--report-to wandb: not installed; pip install wandb" in problems


def test_unscored_data_is_refused_with_the_score_command(tmp_path):
    from mdpo_data.build.stage import run_build
    from mdpo_data.config.build import BuildConfig

    run_build(BuildConfig(source="demo", n=4), tmp_path / "data", progress=False)
    c = load_config(None, {"shards": str(tmp_path / "data"), "output_dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match=r"mdpo-data score .*data --ref-model MODEL"):
        MDPORecipe(c)


@pytest.mark.parametrize("path", TRAIN_YAMLS, ids=[p.name for p in TRAIN_YAMLS])
def test_shipped_train_yaml_is_valid(path):
    options = yaml.safe_load(path.read_text())
    assert options.get("description"), f"{path.name} should say what it is for"
    load_config(path, {"shards": "d", "output_dir": "r"})


def test_shipped_yamls_exist():
    assert {"train_demo.yaml", "train_paper.yaml"} <= {p.name for p in TRAIN_YAMLS}


def test_cli_exits_2_with_every_problem_before_loading_anything(tmp_path):
    result = CliRunner().invoke(main, ["--shards", str(tmp_path / "nope"), "--lr", "-1", "--loss", "ipo"])
    assert result.exit_code == 2
    assert "--output-dir: required" in result.output
    assert "--lr: must be > 0" in result.output
    assert "--loss: 'ipo'" in result.output
    assert "Traceback" not in result.output


def test_cli_rejects_a_bad_loss_weight():
    result = CliRunner().invoke(main, ["--loss-weight", "conditional"])
    assert result.exit_code == 2 and "TERM=WEIGHT" in result.output


def test_cli_help_lists_every_config_key():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in TrainConfig.__dataclass_fields__:
        flag = "--loss-weight" if name == "loss_weights" else "--" + name.replace("_", "-")
        assert flag in result.output, flag
