"""Two trainer options on the tiny model: `loss: sft` from UNSCORED shards (no reference needed),
and `no_image` ("DPO (No Image)"), which trains on text only against the stored no-image
reference columns."""

import math
import warnings

import pytest

from mdpo_data.build.stage import run_build
from mdpo_data.config.build import BuildConfig
from mdpo_data.scoring.stage import score_build
from mdpo_data.demo.tiny import tiny_model_path
from mdpo_train.config import ConfigError, load_config
from mdpo_train.loop import MDPORecipe, run
from mdpo_train.metrics import read_jsonl
from train_fixtures import one_thread

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

BASE = {"global_batch_size": 4, "per_device_batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0,
        "epochs": 1, "seed": 0, "progress": False, "save_steps": 0}


@pytest.fixture(scope="module")
def unscored(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "demo"
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_build(BuildConfig(source="demo", n=12, seed=1), out, progress=False)
    return out


def records(out, split="train"):
    return [r for r in read_jsonl(out / "metrics.jsonl") if r["split"] == split]


@pytest.mark.slow
def test_sft_trains_from_unscored_shards_and_lowers_the_nll(unscored, tmp_path):
    out = tmp_path / "run"
    options = {**BASE, "shards": str(unscored), "output_dir": str(out), "loss": "sft",
               "model": str(tiny_model_path()), "finetune": "full", "lr": 5e-3, "epochs": 3}
    with one_thread():
        run(load_config(None, options))
    steps = records(out)
    assert len(steps) == 9
    first, last = steps[0], steps[-1]
    assert set(k for k in first if k.startswith("loss")) == {"loss", "loss/sft"}
    assert not any(k.startswith(("rewards", "accuracy")) for k in first)  # no reference, no rewards
    # per-token NLL: a summed log-prob over ~8-12 response tokens, so between 1/20 and 1/4 of it
    assert -first["logps/chosen"] / 20 < first["loss/sft"] < -first["logps/chosen"] / 4
    assert last["loss/sft"] < first["loss/sft"] - 0.5


def test_unscored_shards_need_sft_and_a_model(unscored, tmp_path):
    base = {**BASE, "shards": str(unscored), "output_dir": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match="no reference log-probs yet"):
        MDPORecipe(load_config(None, {**base, "loss": "dpo", "model": "tiny"}))
    with pytest.raises(ConfigError, match="--model: required"):
        MDPORecipe(load_config(None, {**base, "loss": "sft"}))


@pytest.mark.slow
def test_no_image_trains_against_the_no_image_reference_columns(tmp_path):
    data = tmp_path / "demo"
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_build(BuildConfig(source="demo", n=8, seed=2), data, progress=False)
        score_build(data, "tiny", progress=False, no_image_logps=True)
    out = tmp_path / "run"
    with one_thread():
        run(load_config(None, {**BASE, "shards": str(data), "output_dir": str(out), "loss": "dpo",
                               "no_image": True, "max_steps": 1, "lr": 1e-9}))
    (step,) = records(out)
    # policy == reference at step 1 only if the text-only sequences meet the text-only columns
    assert step["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert step["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ConfigError, match="--no-image: loss 'mdpo' reads the rejected image"):
        load_config(None, {"shards": str(data), "output_dir": str(out), "loss": "mdpo", "no_image": True})


def test_no_image_needs_data_scored_with_no_image_logps(tmp_path):
    from mdpo_train.data import DataError

    data = tmp_path / "demo"
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_build(BuildConfig(source="demo", n=8, seed=2), data, progress=False)
        score_build(data, "tiny", progress=False)
    recipe = MDPORecipe(load_config(None, {**BASE, "shards": str(data), "output_dir": str(tmp_path / "r"),
                                           "loss": "dpo", "no_image": True}))
    with pytest.raises(DataError, match="--no-image-logps"), one_thread():
        recipe.setup()
