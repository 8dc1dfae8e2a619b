"""Issue 21 (7): a Hub export's manifest lists every parquet file's sha256 and rows; `mdpo-data
validate` checks an export (hashes first, then every row), and `mdpo-train` refuses an export
whose bytes changed (an edited reference log-prob) before it reads a row. Fuzz: every file of
an export truncated, flipped or deleted is a problem line naming it, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mdpo_data.cli import main as mdpo_data
from mdpo_data.format import schema
from mdpo_data.format.shards import sha256_file
from mdpo_train.cli import main as mdpo_train
from train_fixtures import one_thread, scored_demo

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

TRAIN = "data/train-00000-of-00001.parquet"


def invoke(command, *args):
    with one_thread():
        result = CliRunner().invoke(command, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    build = scored_demo(root / "build", n=12, eval_fraction=0.25)
    code, output = invoke(mdpo_data, "push", build, "--repo", "me/data", "--dry-run", root / "hub")
    assert code == 0, output
    return root / "hub"


def test_the_export_manifest_lists_its_parquet_hashes_and_validates(export):
    listed = json.loads((export / "manifest.json").read_text())["export"]
    assert [e["file"] for e in listed] == [TRAIN, "data/eval-00000-of-00001.parquet"]
    for entry in listed:
        assert entry["sha256"] == sha256_file(export / entry["file"])
        assert entry["rows"] == pq.ParquetFile(export / entry["file"]).metadata.num_rows
    code, output = invoke(mdpo_data, "validate", export)
    assert code == 0 and "valid" in output


def edit_reference(export: Path, delta: float) -> None:
    """Rewrite the train parquet with one reference log-prob changed (valid parquet, new bytes)."""
    table = pq.read_table(export / TRAIN)
    column = table.column(schema.REF_CHOSEN).to_pylist()
    column[0] += delta
    index = table.schema.get_field_index(schema.REF_CHOSEN)
    table = table.set_column(index, table.schema.field(index), pa.array(column, pa.float64()))
    pq.write_table(table, export / TRAIN)


def test_training_on_an_edited_export_is_refused_before_any_row_is_read(export, tmp_path):
    hub = shutil.copytree(export, tmp_path / "hub")
    edit_reference(hub, 25.0)
    code, output = invoke(mdpo_train, "--shards", hub, "--output-dir", tmp_path / "run", "--no-progress")
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert code == 1 and len(errors) == 1 and f"{TRAIN}: sha256 does not match manifest.json" in errors[0]
    assert not (tmp_path / "run").exists()
    code, output = invoke(mdpo_data, "validate", hub)
    assert code == 1 and f"{TRAIN}: sha256 does not match manifest.json" in output


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 0x20]) + data[101:])
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
def test_every_damaged_export_file_is_a_problem_line_naming_it(export, tmp_path, how):
    for name in ("manifest.json", TRAIN, "data/eval-00000-of-00001.parquet"):
        hub = shutil.copytree(export, tmp_path / f"{how}-{name.replace('/', '-')}")
        damage(hub / name, how)
        code, output = invoke(mdpo_data, "validate", hub)
        assert code == 1 and Path(name).name in output, (name, output)
        problems = [line for line in output.splitlines() if line.startswith("  - ")]
        assert problems and all(Path(name).name in line for line in problems), output
        code, output = invoke(mdpo_train, "--shards", hub, "--output-dir", tmp_path / "run", "--no-progress")
        assert code in (1, 2) and Path(name).name in output, (name, output)


def test_an_unlisted_parquet_or_an_export_without_hashes_is_refused(export, tmp_path):
    hub = shutil.copytree(export, tmp_path / "extra")
    shutil.copyfile(hub / TRAIN, hub / "data" / "train-00001-of-00002.parquet")
    code, output = invoke(mdpo_data, "validate", hub)
    assert code == 1 and "train-00001-of-00002.parquet: not listed" in output

    hub = shutil.copytree(export, tmp_path / "old")
    manifest = json.loads((hub / "manifest.json").read_text())
    del manifest["export"]
    (hub / "manifest.json").write_text(json.dumps(manifest))
    code, output = invoke(mdpo_train, "--shards", hub, "--output-dir", tmp_path / "run", "--no-progress")
    assert code == 1 and "lists no export files" in output
