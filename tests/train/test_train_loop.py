"""The recipe on the tiny model: resume reproduces an uninterrupted run, a non-finite loss stops
with the last good checkpoint, the spot check catches reference log-probs from another model,
and the outputs (adapter, merged weights, metrics, plot, card) are what they claim to be."""

import shutil

import pyarrow as pa
import pytest
import torch

from mdpo_data.format import schema
from mdpo_data.format.folder import TRAIN_MARK
from mdpo_data.format.manifest import write_manifest
from cli_helpers import manifest_json
from mdpo_data.format.shards import read_shard, sha256_file, shard_files, write_shard
from mdpo_train.checkpoint import list_checkpoints, read_state
from mdpo_train.config import ConfigError, load_config
from mdpo_train.loop import MDPORecipe, NonFiniteLossError, run
from mdpo_train.metrics import read_jsonl
from mdpo_train.verify import SpotCheckError
from train_fixtures import one_thread, scored_demo

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

BASE = {  # 18 train rows -> 5 steps per epoch of 4 examples (2 x 2 accumulation; last step 2)
    "global_batch_size": 4, "per_device_batch_size": 2, "lr": 5e-3, "lora_r": 4, "lora_alpha": 8,
    "lora_dropout": 0.1, "warmup_ratio": 0.0, "epochs": 2, "seed": 3, "progress": False, "save_steps": 0,
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return scored_demo(tmp_path_factory.mktemp("data") / "demo", n=24, eval_fraction=0.25)


def train(data, out, **options):
    with one_thread():
        return run(load_config(None, {**BASE, "shards": str(data), "output_dir": str(out), **options}))


def train_losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "train"}


def test_resume_continues_exactly_like_an_uninterrupted_run(demo, tmp_path):
    # Uninterrupted: 6 steps, a checkpoint at 3 and 6. Steps 4-5 finish epoch 0, 6 starts epoch 1.
    full = tmp_path / "full"
    train(demo, full, max_steps=6, save_steps=3)
    # A crash right after step 3: a new run folder holding only that checkpoint, resumed.
    crashed = tmp_path / "crashed"
    shutil.copytree(full / "checkpoints" / "checkpoint-3", crashed / "checkpoints" / "checkpoint-3")
    shutil.copy(full / TRAIN_MARK, crashed / TRAIN_MARK)  # the run marks its folder first
    resumed = train(demo, crashed, max_steps=6, save_steps=3, resume="latest")
    expected, got = train_losses(full), train_losses(crashed)
    assert sorted(got) == [4, 5, 6]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    assert len({round(v, 6) for v in got.values()}) == 3  # the steps really differ
    assert resumed.position.global_step == 6 and resumed.position.epoch == 1
    assert read_state(full / "checkpoints" / "checkpoint-3")[0].step_in_epoch == 3


def test_resume_refuses_a_changed_config_and_a_missing_checkpoint(demo, tmp_path):
    out = tmp_path / "run"
    train(demo, out, max_steps=1, save_steps=1)
    options = {**BASE, "shards": str(demo), "output_dir": str(out), "max_steps": 1}
    with pytest.raises(ConfigError, match="already holds checkpoints: pass --resume latest"):
        MDPORecipe(load_config(None, options))
    with pytest.raises(ConfigError, match=r"config differs from the checkpoint's: lr: checkpoint 0.005, now 0.1"):
        MDPORecipe(load_config(None, {**options, "resume": "latest", "lr": 0.1}))
    with pytest.raises(ConfigError, match="no checkpoint in"):
        MDPORecipe(load_config(None, {**options, "output_dir": str(tmp_path / "empty"), "resume": "latest"}))


def test_a_non_finite_loss_stops_with_the_last_good_checkpoint(demo, tmp_path):
    out = tmp_path / "run"
    # lr 1e30 puts the LoRA weights at ~1e30 after step 1; their product overflows in step 2.
    with pytest.raises(NonFiniteLossError) as error:
        train(demo, out, lr=1e30, max_grad_norm=0.0, max_steps=4)
    message = str(error.value)
    assert "non-finite training loss" in message and "Stopped at step 2" in message
    assert "checkpoint-1" in message and "Lower --lr" in message
    (checkpoint,) = list_checkpoints(out)
    assert checkpoint.name == "checkpoint-1" and read_state(checkpoint)[0].global_step == 1
    assert not (out / "adapter_model.safetensors").exists()
    assert max(train_losses(out)) == 1  # only the good step was logged


def _shift_stored(data, column, delta):
    shard = shard_files(data, "train")[0]
    table = read_shard(shard)
    index = table.schema.get_field_index(column)
    values = [v + delta for v in table.column(column).to_pylist()]
    write_shard(shard, [table.set_column(index, table.schema.field(column), pa.array(values, pa.float64()))])
    # as a scorer would have written them: the manifest vouches for the new bytes (else the
    # trainer's shard verification refuses the folder before anything else runs)
    manifest = manifest_json(data)
    for entry in manifest["splits"]["train"]:
        if entry["file"] == shard.name:
            entry["sha256"] = sha256_file(shard)
    write_manifest(data, manifest)


def test_the_spot_check_stops_training_on_reference_logps_of_another_model(demo, tmp_path):
    data = shutil.copytree(demo, tmp_path / "data")
    _shift_stored(data, schema.REF_CHOSEN_REJECTED_IMAGE, 0.5)  # as if another model scored them
    with pytest.raises(SpotCheckError) as error:
        train(data, tmp_path / "run", max_steps=1)
    message = str(error.value)
    assert "do not match this model (4 of 12 values off" in message
    assert "ref_chosen_rejected_image_logps: stored" in message and "scored by 'tiny' in float32" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before training


def test_another_model_is_refused_unless_forced(demo, tmp_path):
    from mdpo_data.demo.tiny import build_tiny_llava

    other = build_tiny_llava(tmp_path / "other", seed=1)
    options = {**BASE, "shards": str(demo), "output_dir": str(tmp_path / "run"), "model": str(other)}
    with pytest.raises(ConfigError, match="is not the model that scored .* pass --force-model"):
        MDPORecipe(load_config(None, options))
    with pytest.warns(UserWarning, match="--force-model: training anyway; the stored reference"):
        train(demo, tmp_path / "run", model=str(other), force_model=True, max_steps=1)


def test_outputs_adapter_merged_weights_metrics_plot_and_card(demo, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mdpo_data.scoring.logprobs import packed_logps
    from mdpo_data.demo.tiny import tiny_model_path
    from mdpo_train.data import make_batch
    from mdpo_train.losses import SEQUENCES

    out = tmp_path / "run"
    recipe = train(demo, out, max_steps=3, merge=True, lr=2e-2)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md",
                 "curves.png", "metrics.jsonl", "train_config.yaml", "merged/config.json"):
        assert (out / name).is_file(), name
    records = read_jsonl(out / "metrics.jsonl")
    train_rows = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert {"loss/dpo", "loss/conditional", "loss/anchor", "rewards/chosen", "rewards/rejected",
            "rewards/chosen_rejected_image", "margins/dpo", "margins/conditional", "accuracy/dpo",
            "accuracy/conditional", "logps/chosen", "lr", "grad_norm"} <= set(train_rows[0])
    assert train_rows[0]["loss"] == pytest.approx(3 * 0.693147, abs=1e-4)  # policy == reference
    assert [r["step"] for r in records if r["split"] == "eval"] == [3]  # eval at the end
    card = (out / "README.md").read_text()
    assert "`mdpo` = dpo + conditional + anchor" in card and str(demo) in card and "SMOKE TEST" in card
    assert "docs/method.md" in card and "arxiv.org/abs/2406.11839" in card  # a citation that works on the Hub
    memory = recipe.memory
    assert memory["peak_memory_source"] == "peak RSS of the process" and memory["peak_memory_gib"] > 0.05
    assert f"| peak memory | {memory['peak_memory_gib']:.2f} GiB (peak RSS of the process) |" in card

    # The saved adapter and the merged weights give the trained policy's log-probs.
    rows = recipe.train_data.take(range(2))
    batch = make_batch(rows, recipe.processor, SEQUENCES, None)
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_path()).eval()
    with one_thread(), torch.no_grad():
        reference, _ = packed_logps(base, batch.inputs)
        adapter, _ = packed_logps(PeftModel.from_pretrained(base, out).eval(), batch.inputs)
        merged, _ = packed_logps(AutoModelForImageTextToText.from_pretrained(out / "merged").eval(), batch.inputs)
    assert torch.allclose(adapter, merged, atol=1e-3)
    assert not torch.allclose(adapter, reference, atol=1e-2)  # training moved the policy


def test_dpo_runs_two_sequences_per_example_with_gradient_checkpointing(demo, tmp_path):
    out = tmp_path / "run"
    train(demo, out, loss="dpo", max_steps=1, gradient_checkpointing=True)
    (record,) = [r for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "train"]
    assert set(k for k in record if k.startswith("loss")) == {"loss", "loss/dpo"}
    assert not any("chosen_rejected_image" in k for k in record)
    assert record["loss"] == pytest.approx(0.693147, abs=1e-4)  # policy == reference at step 1


def test_full_finetuning_updates_the_language_model_only(demo, tmp_path):
    from safetensors.torch import load_file

    from mdpo_data.demo.tiny import tiny_model_path

    out = tmp_path / "run"
    train(demo, out, finetune="full", max_steps=1, lr=1e-3)
    before = load_file(str(tiny_model_path() / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("language_model" in k or k.startswith("lm_head") for k in changed)
    assert not (out / "adapter_config.json").exists()


def test_two_ddp_processes_match_one_process_with_accumulation(demo, tmp_path):
    """accelerate + torch.distributed (gloo on CPU): 2 processes x 2 examples = 1 process x 2 x 2."""
    import os
    import subprocess
    import sys

    options = {**BASE, "lora_dropout": 0.0, "max_steps": 3, "save_steps": 2}  # no dropout: RNG per rank
    train(demo, tmp_path / "single", **options)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items() if not isinstance(v, bool)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "mdpo_train.cli",
               "--shards", str(demo), "--output-dir", str(tmp_path / "ddp"), "--no-progress", *flags]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x 1 accumulation x 2 processes = 4" in done.stdout
    single, ddp = train_losses(tmp_path / "single"), train_losses(tmp_path / "ddp")
    assert sorted(ddp) == [1, 2, 3]
    for step in ddp:
        assert ddp[step] == pytest.approx(single[step], rel=1e-4), step
    states = sorted(p.name for p in (tmp_path / "ddp" / "checkpoints" / "checkpoint-2").iterdir())
    assert {"random_states_0.pkl", "random_states_1.pkl", "trainable.safetensors"} <= set(states)


def test_data_scored_under_the_old_response_rule_is_refused(demo, tmp_path):
    from mdpo_data.format.manifest import write_manifest
    from cli_helpers import manifest_json

    old = tmp_path / "old"
    shutil.copytree(demo, old)
    manifest = manifest_json(old)
    del manifest["reference"]["fingerprint"]["response_rule"]  # scored before the rule was recorded
    write_manifest(old, manifest)
    options = {**BASE, "shards": str(old), "output_dir": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match=r"response rule v1 .* Re-score the data: `mdpo-data score"):
        MDPORecipe(load_config(None, options))
