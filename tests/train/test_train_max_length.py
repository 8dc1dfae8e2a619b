"""Issue 21 (17, 18): `mdpo-train --max-length` below the scorer's. The spot check runs at the
scorer's length (no abort blaming the processor); too-long examples are a counted skip the
model card reports; a step that kept no example makes no update; the gradient is the mean over
the examples kept, not the ones planned. And processor_sha256 does not move after the
processor's first padded call."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from mdpo_data.scoring.models import load_model, processor_sha256
from mdpo_train.checkpoint import read_state
from mdpo_train.cli import main
from mdpo_train.config import load_config
from mdpo_train.data import make_batch
from mdpo_train.loop import MDPORecipe
from train_fixtures import one_thread, scored_demo

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

OPTIONS = {"global_batch_size": 4, "per_device_batch_size": 2, "lora_r": 4, "lora_alpha": 8, "epochs": 1,
           "max_steps": 2, "save_steps": 2, "warmup_ratio": 0.0, "progress": False, "max_grad_norm": 0.0}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return scored_demo(tmp_path_factory.mktemp("data") / "demo", n=12, eval_fraction=0.25)


def flags(options):
    out = []
    for key, value in options.items():
        name = "--" + key.replace("_", "-")
        out += ([name] if value else ["--no-" + name[2:]]) if isinstance(value, bool) else [name, str(value)]
    return out


def test_processor_sha256_is_the_same_after_a_padded_call(demo):
    from mdpo_data.demo.tiny import tiny_model_path

    _, processor = load_model(str(tiny_model_path()), dtype="float32", device="cpu")
    before = processor_sha256(processor)
    processor.tokenizer(["a b", "a b c d e"], padding=True, truncation=True, max_length=3)
    assert processor_sha256(processor) == before


def test_every_example_too_long_is_a_counted_skip_and_no_update(demo, tmp_path):
    run = tmp_path / "run"
    with one_thread():
        result = CliRunner().invoke(main, ["--shards", str(demo), "--output-dir", str(run),
                                           *flags(OPTIONS), "--max-length", "8"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    card = (run / "README.md").read_text()
    assert "too long for max length 8: 8 train example(s) skipped" in card  # 2 steps x 4
    assert "2 step(s) kept no example and made no update" in card
    assert "| optimizer steps | 0 |" in card
    adapter = load_file(run / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(not v.any() for v in lora_b)  # LoRA B starts at zero: never stepped
    position, _ = read_state(run / "checkpoints" / "checkpoint-2")
    assert position.global_step == 2 and position.empty_steps == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["examples"] for r in records if r["split"] == "train"] == [0, 0]


def first_adam_moments(recipe, rows):
    batch = recipe.collate(rows)
    recipe._train_step(len(rows), 1, iter([batch]))
    state = recipe.optimizer.state_dict()["state"]
    return [state[i]["exp_avg"].clone() for i in sorted(state)], len(batch)


def test_the_gradient_is_the_mean_over_the_kept_examples(demo, tmp_path):
    """One step planned over 4 examples of which 2 fit --max-length equals (Adam's first moment
    is (1 - beta1) x gradient) one step planned over exactly those 2."""
    with one_thread():
        probe = MDPORecipe(load_config(None, {**OPTIONS, "shards": str(demo), "output_dir": str(tmp_path / "p")}))
        probe.setup()
        rows = probe.train_data.take(range(4))
        batch = make_batch(rows, probe.processor, probe.sequences, None)
        n = len(rows)
        need = [max(batch.inputs.lengths[k * n + i] for k in range(len(probe.sequences))) for i in range(n)]
        limit = sorted(need)[1]  # the two shortest fit
        kept_rows = [row for row, length in zip(rows, need) if length <= limit]
        assert len(kept_rows) == 2, need

        options = {**OPTIONS, "shards": str(demo), "max_length": limit, "lora_dropout": 0.0}
        mixed = MDPORecipe(load_config(None, {**options, "output_dir": str(tmp_path / "a")}))
        mixed.setup()
        moments, kept = first_adam_moments(mixed, rows)
        assert kept == 2
        alone = MDPORecipe(load_config(None, {**options, "output_dir": str(tmp_path / "b")}))
        alone.setup()
        expected, _ = first_adam_moments(alone, kept_rows)
    assert any(m.abs().sum() > 0 for m in expected)
    for got, want in zip(moments, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)
