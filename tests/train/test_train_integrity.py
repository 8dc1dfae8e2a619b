"""Issue 9, trainer side, through the real `mdpo-train` command: every shard is verified
against the manifest before the first step, `--resume` refuses other data, an undecodable
stored image is one clear error, and a failed start does not block a re-run."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pytest
from click.testing import CliRunner

from mdpo_data.format import schema
from mdpo_data.format.manifest import write_manifest
from cli_helpers import manifest_json
from mdpo_data.format.shards import read_shard, sha256_file, write_shard
from mdpo_train.checkpoint import STATE_FILE, checkpoint_dir
from mdpo_train.cli import main
from mdpo_train.metrics import MetricsLog, read_jsonl
from train_fixtures import one_thread, scored_demo

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

SHARD = "train-00000-of-00001.arrow"
OPTIONS = {"global_batch_size": 4, "per_device_batch_size": 2, "lora_r": 4, "lora_alpha": 8,
           "epochs": 1, "max_steps": 2, "save_steps": 0, "progress": False}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return scored_demo(tmp_path_factory.mktemp("data") / "demo", n=12, eval_fraction=0.25)


def train(data, run, *extra) -> tuple[int, str]:
    args = ["--shards", str(data), "--output-dir", str(run)]
    for key, value in OPTIONS.items():
        flag = "--" + key.replace("_", "-")
        args += [flag if value is not False else "--no-" + key.replace("_", "-")] if isinstance(value, bool) \
            else [flag, str(value)]
    with one_thread():
        result = CliRunner().invoke(main, [*args, *map(str, extra)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def rewrite(data, column, row, value):
    table = read_shard(data / SHARD)
    values = table.column(column).to_pylist()
    values[row] = value
    field = table.schema.field(column)
    write_shard(data / SHARD, [table.set_column(table.schema.get_field_index(column), field,
                                                pa.array(values, field.type))])


def test_5_a_tampered_or_deleted_shard_is_refused_before_training(demo, tmp_path):
    data = shutil.copytree(demo, tmp_path / "data")
    value = read_shard(data / SHARD).column(schema.REF_CHOSEN)[0].as_py()
    rewrite(data, schema.REF_CHOSEN, 0, value + 25)
    code, output = train(data, tmp_path / "run")
    assert code == 1 and f"{SHARD}: sha256" in error_line(output) and "does not match manifest.json" in output
    assert not (tmp_path / "run").exists()

    data = shutil.copytree(demo, tmp_path / "data2")
    (data / "eval-00000-of-00001.arrow").unlink()
    code, output = train(data, tmp_path / "run")
    assert code == 1 and "eval-00000-of-00001.arrow: listed in manifest.json but missing" in error_line(output)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_5_a_corrupt_image_is_one_clear_error_and_a_rerun_is_not_blocked(demo, tmp_path):
    data = shutil.copytree(demo, tmp_path / "data")
    table = read_shard(data / SHARD)
    cells = table.column("images").to_pylist()
    for cell in cells:  # every row: the spot check and the first batch both meet one
        cell[0]["bytes"] = b"\xff\xd8\xff\xe0 not really a jpeg"
    write_shard(data / SHARD, [table.set_column(table.schema.get_field_index("images"),
                                                table.schema.field("images"),
                                                pa.array(cells, table.schema.field("images").type))])
    manifest = manifest_json(data)  # a manifest that vouches for the bad bytes
    manifest["splits"]["train"][0]["sha256"] = sha256_file(data / SHARD)
    write_manifest(data, manifest)
    run = tmp_path / "run"
    code, output = train(data, run, "--spot-check-rows", 0)
    assert code == 1 and "a stored image or text cannot be decoded" in error_line(output)
    code, output = train(data, run)
    assert code == 1 and "spot-check rows" in error_line(output)
    assert "already holds" not in output  # the failed start did not block the re-run
    code, output = train(demo, run)
    assert code == 0, output


def test_9_a_torn_last_line_of_metrics_is_dropped_at_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "split": "train", "loss": 2.0}) + "\n"
                    + json.dumps({"step": 2, "split": "train", "loss": 1.9}) + "\n" + '{"step": 3, "spl')
    MetricsLog(path, resume_step=2)
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]


def test_9_a_damaged_checkpoint_state_is_a_config_error(demo, tmp_path):
    run = tmp_path / "run"
    state = checkpoint_dir(run, 1) / STATE_FILE
    state.parent.mkdir(parents=True)
    state.write_text("{torn")
    code, output = train(demo, run, "--resume", "latest")
    assert code == 2 and "no checksums.json" in output and "Traceback" not in output
    (state.parent / "checksums.json").write_text("{torn")
    code, output = train(demo, run, "--resume", "latest")
    assert code == 2 and "checksums.json is damaged" in output and "Traceback" not in output
