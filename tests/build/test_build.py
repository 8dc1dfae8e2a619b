"""End-to-end builds through the real `mdpo-data` CLI: shards, manifest, determinism, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import datasets
import pytest

from mdpo_data.format import schema
from cli_helpers import manifest_json
from mdpo_data.format.shards import read_shard, sha256_file, shard_files

from cli_helpers import CLI, folder_bytes, run_cli


def demo_build(out: Path, *extra):
    return run_cli("build", "--source", "demo", "--n", 60, "--shard-size", 25, "--seed", 3,
                   "--out", out, "--quiet", *extra)


@pytest.mark.slow
def test_demo_build_writes_contract_shards_and_manifest(tmp_path):
    out = tmp_path / "demo"
    proc = demo_build(out, "--eval-fraction", "0.2")
    assert "written: train" in proc.stdout

    manifest = manifest_json(out)
    assert manifest["counts"]["written_by_split"] == {"train": 48, "eval": 12}
    assert manifest["rejected_image"]["resolved"] == "crop:0.01-0.2"
    assert manifest["reference"] is None
    assert "--out OUT" in manifest["command"] and str(tmp_path) not in json.dumps(manifest)
    for split, entries in manifest["splits"].items():
        files = shard_files(out, split)
        assert [f.name for f in files] == [e["file"] for e in entries]
        for f, e in zip(files, entries):
            assert sha256_file(f) == e["sha256"]

    train = datasets.load_dataset("arrow", data_files=[str(f) for f in shard_files(out, "train")])["train"]
    assert train.num_rows == 48
    assert set(schema.COLUMNS) == set(train.column_names)
    assert isinstance(train.features["images"].feature, datasets.Image)
    assert isinstance(train.features["rejected_images"].feature, datasets.Image)
    row = train[0]
    image, rejected = row["images"][0], row["rejected_images"][0]
    assert image.size == rejected.size  # crops are resized back to the original size
    assert image.tobytes() != rejected.tobytes()
    assert row["prompt"][0]["content"][0]["type"] == "image"
    assert row[schema.REF_CHOSEN] is None  # present, null until scored
    ids = list(train["example_id"]) + list(datasets.Dataset.from_file(str(shard_files(out, "eval")[0]))["example_id"])
    assert len(set(ids)) == len(ids) == 60


@pytest.mark.slow
def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    demo_build(tmp_path / "a")
    demo_build(tmp_path / "b", "--workers", "2")
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")

    run_cli("build", "--source", "demo", "--n", 60, "--shard-size", 25, "--seed", 4,
            "--out", tmp_path / "c", "--quiet")
    ids = lambda d: set(list(datasets.Dataset.from_file(str(shard_files(d, "train")[0]))["example_id"]))  # noqa: E731
    assert ids(tmp_path / "a") != ids(tmp_path / "c")


@pytest.mark.slow
def test_rerun_is_a_noop_and_other_config_needs_overwrite(tmp_path):
    out = tmp_path / "demo"
    demo_build(out)
    before = folder_bytes(out)
    proc = demo_build(out)
    assert "0 written, 3 reused" in proc.stdout
    assert folder_bytes(out) == before

    proc = run_cli("build", "--source", "demo", "--n", 60, "--shard-size", 25, "--seed", 3,
                   "--rejected", "moco", "--out", out, "--quiet", check=False)
    assert proc.returncode == 1 and "different config" in proc.stderr and "--overwrite" in proc.stderr
    run_cli("build", "--source", "demo", "--n", 60, "--shard-size", 25, "--seed", 3,
            "--rejected", "moco", "--out", out, "--quiet", "--overwrite")
    assert manifest_json(out)["rejected_image"]["resolved"] == "moco"


@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(tmp_path):
    reference, out = tmp_path / "ref", tmp_path / "killed"
    args = ["build", "--source", "demo", "--n", 400, "--shard-size", 20, "--seed", 5, "--quiet",
            "--rejected", "noise:500"]
    run_cli(*args, "--out", reference)

    proc = subprocess.Popen([*CLI, *map(str, args), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("train-*.arrow"))) < 3:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    partial = len(list(out.glob("train-*.arrow")))
    assert 3 <= partial < 20

    resumed = run_cli(*args, "--out", out)
    assert f"{partial} reused" in resumed.stdout or "reused" in resumed.stdout
    assert folder_bytes(out) == folder_bytes(reference)
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_pipeline_file_flags_override_and_unknown_keys_fail(tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("source: demo\nn: 30\nrejected: moco\nseed: 1\nshard-size: 10\n")
    out = tmp_path / "out"
    run_cli("build", "--pipeline", pipeline, "--rejected", "crop:0.2-0.5", "--out", out, "--quiet")
    manifest = manifest_json(out)
    assert manifest["config"]["n"] == 30 and manifest["config"]["rejected"] == "crop:0.2-0.5"

    pipeline.write_text("source: demo\nnn: 30\ncolour: red\n")
    proc = run_cli("build", "--pipeline", pipeline, "--out", out, check=False)
    assert proc.returncode == 2 and "unknown key(s) colour, nn" in proc.stderr


@pytest.mark.slow
def test_bad_rejected_spec_is_a_usage_error_listing_valid_forms(tmp_path):
    proc = run_cli("build", "--source", "demo", "--rejected", "crop:0.5-0.1", "--out", tmp_path, check=False)
    assert proc.returncode == 2
    for form in ("crop:LO-HI", "swap", "moco", "noise:T"):
        assert form in proc.stderr
    assert "Traceback" not in proc.stderr


def test_shipped_pipelines_are_valid():
    from mdpo_data.rejected.registry import parse_spec
    from mdpo_data.config.pipeline import build_config, load_pipeline

    files = sorted(Path(__file__).parents[2].joinpath("pipelines").glob("*.yaml"))
    build_files = [f for f in files if not f.name.startswith("train_")]
    assert len(build_files) >= 5
    for path in build_files:
        config = build_config(load_pipeline(path))
        parse_spec(config.rejected)


@pytest.mark.slow
def test_fewer_pairs_than_requested_warns_and_records(tmp_path):
    out = tmp_path / "small"
    proc = run_cli("build", "--source", "demo", "--demo-size", 20, "--n", 50, "--out", out, "--quiet")
    assert "fewer than --n 50" in proc.stderr
    counts = manifest_json(out)["counts"]
    assert counts["requested"] == 50 and counts["sampled"] <= 20 and counts["written"] == counts["sampled"]


@pytest.mark.slow
def test_swap_never_uses_the_same_image(tmp_path):
    out = tmp_path / "swap"
    run_cli("build", "--source", "demo", "--n", 40, "--rejected", "swap", "--out", out, "--quiet")
    for row in read_shard(shard_files(out, "train")[0]).to_pylist():
        assert row["images"][0]["bytes"] != row["rejected_images"][0]["bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["moco", "noise:900", "crop:0.2-0.5"])
def test_every_strategy_builds(tmp_path, spec):
    out = tmp_path / "s"
    run_cli("build", "--source", "demo", "--n", 8, "--rejected", spec, "--out", out, "--quiet")
    assert manifest_json(out)["counts"]["written"] == 8


@pytest.mark.slow
def test_rebuilding_a_scored_folder_keeps_its_scores(tmp_path):
    out = tmp_path / "scored"
    args = ["build", "--source", "demo", "--n", 16, "--ref-model", "tiny", "--out", out, "--quiet"]
    run_cli(*args)
    before = folder_bytes(out)
    proc = run_cli(*args)
    assert "0 written, 1 reused" in proc.stdout
    assert folder_bytes(out) == before
    assert manifest_json(out)["reference"]["scored"]
