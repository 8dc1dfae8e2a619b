"""Training data: the step plan, dropped rows, batches that reproduce the stored reference
log-probs through the shared log-prob code, and Hub-export folders."""

import math
import shutil

import pyarrow as pa
import pytest
import torch

from mdpo_data.format import schema
from mdpo_data.format.manifest import MANIFEST_NAME
from cli_helpers import manifest_json
from mdpo_data.format.shards import read_shard, shard_files, write_shard
from mdpo_train.data import inspect_source, load_splits, local_micro_batches, make_batch, plan_epoch
from mdpo_train.losses import CHOSEN, CHOSEN_REJECTED_IMAGE, REJECTED, SEQUENCES
from train_fixtures import one_thread, scored_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return scored_demo(tmp_path_factory.mktemp("data") / "demo", n=12, eval_fraction=0.25)


@pytest.fixture(scope="module")
def tiny():
    from mdpo_data.scoring.models import load_model

    with pytest.warns(UserWarning, match="SMOKE-TEST"):
        return load_model("tiny", dtype="float32", device="cpu")


# ------------------------------------------------------------------ the plan
def test_plan_is_a_pure_function_of_seed_and_epoch():
    a, b = plan_epoch(10, seed=1, epoch=0, global_batch=4, world=1), plan_epoch(10, 1, 0, 4, 1)
    assert a == b
    assert [len(step) for step in a] == [4, 4, 2]
    assert sorted(i for step in a for i in step) == list(range(10))  # each example once
    assert plan_epoch(10, 1, 1, 4, 1) != a  # a new order every epoch
    assert plan_epoch(10, 2, 0, 4, 1) != a


def test_a_tail_too_short_for_every_process_is_dropped():
    assert [len(s) for s in plan_epoch(9, 0, 0, global_batch=4, world=2)] == [4, 4]  # tail of 1 < 2
    assert [len(s) for s in plan_epoch(10, 0, 0, global_batch=4, world=2)] == [4, 4, 2]


def test_local_micro_batches_split_a_step_across_processes():
    step = [10, 11, 12, 13, 14, 15, 16, 17]
    assert local_micro_batches(step, rank=0, world=2, per_device=2) == [[10, 12], [14, 16]]
    assert local_micro_batches(step, rank=1, world=2, per_device=2) == [[11, 13], [15, 17]]
    assert local_micro_batches(step[:3], rank=0, world=1, per_device=2) == [[10, 11], [12]]


# ------------------------------------------------------------------ rows
def test_rows_with_null_or_infinite_reference_logps_are_dropped_and_counted(demo, tmp_path):
    data = shutil.copytree(demo, tmp_path / "data")
    shard = shard_files(data, "train")[0]
    table = read_shard(shard)
    values = table.column(schema.REF_REJECTED).to_pylist()
    values[0], values[1] = None, math.inf
    field = table.schema.field(schema.REF_REJECTED)
    table = table.set_column(table.schema.get_field_index(schema.REF_REJECTED), field,
                             pa.array(values, type=field.type))
    write_shard(shard, [table])
    source, problems = inspect_source(data)
    assert not problems
    with pytest.warns(UserWarning, match=rf"train: dropped 2 of {len(values)} rows .*ref_rejected_logps"):
        splits = load_splits(source, SEQUENCES)
    assert len(splits["train"]) == len(values) - 2
    # a loss that never reads ref_rejected_logps keeps those rows
    assert len(load_splits(source, (CHOSEN, CHOSEN_REJECTED_IMAGE))["train"]) == len(values)


def test_batches_reproduce_the_stored_reference_logps(demo, tiny):
    """The trainer's batch + the shared log-prob function == what the scorer stored."""
    from mdpo_data.scoring.logprobs import packed_logps

    model, processor = tiny
    files = sorted(p.name for p in demo.rglob("*"))
    source, _ = inspect_source(demo)
    rows = load_splits(source, SEQUENCES)["train"].take(range(3))
    assert isinstance(rows[0]["images"][0]["bytes"], bytes)  # the stored bytes, undecoded
    assert sorted(p.name for p in demo.rglob("*")) == files  # nothing written into the data
    batch = make_batch(rows, processor, SEQUENCES, max_length=2048)
    assert batch.example_ids == [r["example_id"] for r in rows] and batch.too_long == 0
    assert batch.inputs.rows == 6  # 3 examples x ((y_w, y_l) under m_w, y_w under m_l), one forward
    with one_thread(), torch.no_grad():
        logps, _ = packed_logps(model, batch.inputs)
    by_sequence = dict(zip(SEQUENCES, logps.view(3, -1)))
    for name, column in ((CHOSEN, schema.REF_CHOSEN), (REJECTED, schema.REF_REJECTED),
                         (CHOSEN_REJECTED_IMAGE, schema.REF_CHOSEN_REJECTED_IMAGE)):
        stored = torch.tensor([r[column] for r in rows])
        assert torch.allclose(batch.reference[name], stored)
        assert torch.allclose(by_sequence[name], stored, atol=1e-3), name


def test_batches_with_a_system_prompt_reproduce_the_stored_reference_logps(tmp_path, tiny):
    """The system message is part of the scored prompt: the trainer's packed rows carry it too,
    so at step 0 the policy equals the reference on data built with --system-prompt."""
    from mdpo_data.scoring.logprobs import packed_logps
    from train_fixtures import scored_demo

    data = scored_demo(tmp_path / "sys", n=6, eval_fraction=0.0,
                       system_prompt="You answer questions about simple shapes.")
    model, processor = tiny
    source, _ = inspect_source(data)
    rows = load_splits(source, SEQUENCES)["train"].take(range(3))
    assert schema.system_of(rows[0]["prompt"]) == "You answer questions about simple shapes."
    for share in (True, False):
        batch = make_batch(rows, processor, SEQUENCES, max_length=2048, share=share)
        with one_thread(), torch.no_grad():
            logps, _ = packed_logps(model, batch.inputs)
        for name, got in zip(SEQUENCES, logps.view(3, -1)):
            assert torch.allclose(got, batch.reference[name], atol=1e-3), (share, name)


def test_examples_longer_than_max_length_are_dropped_not_truncated(demo, tiny):
    _, processor = tiny
    source, _ = inspect_source(demo)
    rows = load_splits(source, SEQUENCES)["train"].take(range(2))
    batch = make_batch(rows, processor, (CHOSEN, REJECTED), max_length=10)
    assert len(batch) == 0 and batch.too_long == 2


# ------------------------------------------------------------------ folders
def test_a_hub_export_trains_like_the_build_folder(demo, tmp_path):
    from mdpo_data.report.publish import export_hub_folder

    out = export_hub_folder(demo, tmp_path / "export", check=False)
    assert not shard_files(out, "train") and (out / "data").is_dir()
    source, problems = inspect_source(out)
    assert not problems and source.fingerprint == manifest_json(demo)["reference"]["fingerprint"]
    exported, built = load_splits(source, SEQUENCES), load_splits(inspect_source(demo)[0], SEQUENCES)
    assert exported["train"].column("example_id") == built["train"].column("example_id")
    assert exported["train"].column(schema.REF_CHOSEN) == built["train"].column(schema.REF_CHOSEN)

    (out / MANIFEST_NAME).unlink()
    _, problems = inspect_source(out)
    assert "has no manifest.json" in problems[0] and "Hub export" in problems[0]
