"""validate: every problem is reported as a line naming where it is; nothing raises."""

from __future__ import annotations

import json
import math

import pyarrow as pa

from mdpo_data.format import schema
from mdpo_data.format.manifest import write_manifest
from cli_helpers import manifest_json
from mdpo_data.format.shards import sha256_file, write_shard
from mdpo_data.report.validate import validate
from card_fixtures import make_rows, write_build


def only(problems, text):
    """The problems mentioning `text`."""
    return [p for p in problems if text in p]


def test_valid_builds_have_no_problems(tmp_path):
    assert validate(write_build(tmp_path / "scored")) == []
    assert validate(write_build(tmp_path / "unscored", scored=False, n_eval=0)) == []


def test_not_a_build_folder_is_reported_not_raised(tmp_path):
    assert validate(tmp_path / "nope") == [f"{tmp_path / 'nope'} is not a directory"]
    problems = validate(tmp_path)
    assert only(problems, "no manifest.json") and only(problems, "no train shards")
    (tmp_path / "manifest.json").write_text("[1, 2]")
    assert only(validate(tmp_path), "manifest.json: not a JSON object")
    (tmp_path / "manifest.json").write_text("{not json")
    assert only(validate(tmp_path), "not valid JSON")


def _set_version(directory, version):
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["format_version"] = version
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_format_version_newer_major_refused_newer_minor_read(tmp_path):
    directory = write_build(tmp_path / "b")
    major, minor = (int(x) for x in schema.FORMAT_VERSION.split("."))
    _set_version(directory, f"{major + 1}.0")
    problems = validate(directory)
    assert only(problems, f"format_version {major + 1}.0 was written by a newer mdpo-data")
    _set_version(directory, f"{major}.{minor + 5}")  # a newer minor only adds fields: readable
    assert validate(directory) == []
    _set_version(directory, major)  # the legacy integer form reads as MAJOR.0
    assert validate(directory) == []
    _set_version(directory, "one")
    assert only(validate(directory), "field format_version")


def test_changed_missing_and_unlisted_shards(tmp_path):
    directory = write_build(tmp_path / "b", n_train=6, shard_size=3)
    # same name, other rows: checksum and row count both disagree with the manifest
    write_shard(directory / "train-00000-of-00002.arrow", [make_rows("train", 2, scored=True)])
    (directory / "eval-00000-of-00001.arrow").unlink()
    write_shard(directory / "eval-00001-of-00002.arrow", [make_rows("x", 1, scored=True)])
    problems = validate(directory)
    # the bytes are refused before Arrow parses them: no row count of a changed shard
    assert only(problems, "train-00000-of-00002.arrow: sha256 does not match")
    assert not only(problems, "train-00000-of-00002.arrow: 2 rows")
    assert only(problems, "eval-00000-of-00001.arrow: listed in manifest.json but missing")
    assert only(problems, "eval-00001-of-00002.arrow: present but not listed")
    assert only(problems, "eval-00001-of-00002.arrow: name does not fit")
    # a manifest whose hash matches new bytes but whose row count does not
    manifest = manifest_json(directory)
    manifest["splits"]["train"][0]["sha256"] = sha256_file(directory / "train-00000-of-00002.arrow")
    manifest["splits"]["eval"] = []
    manifest["counts"]["written_by_split"].pop("eval")
    write_manifest(directory, manifest)
    (directory / "eval-00001-of-00002.arrow").unlink()
    problems = validate(directory)
    assert only(problems, "train-00000-of-00002.arrow: 2 rows, manifest.json says 3")
    assert only(problems, "split train: 5 rows in shards, manifest counts.written_by_split says 6")


def test_wrong_schema_names_the_columns(tmp_path):
    directory = write_build(tmp_path / "b", n_eval=0, shard_size=10)
    table = schema.rows_to_table(make_rows("train", 2, scored=True)).drop_columns(["seed"])
    with pa.OSFile(str(directory / "train-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    manifest = manifest_json(directory)  # the manifest describes the foreign shard faithfully
    manifest["splits"]["train"][0]["sha256"] = sha256_file(directory / "train-00000-of-00001.arrow")
    write_manifest(directory, manifest)
    problems = validate(directory)
    assert only(problems, "schema differs") and only(problems, "missing columns ['seed']")
    assert not only(problems, "row 0")  # rows of a foreign schema are not checked further


def test_bad_rows_name_the_shard_row_and_id(tmp_path):
    def plant(split, rows):
        if split == "train":
            rows[1]["images"] = [{"bytes": b"GIF89a broken", "path": None}]
            rows[2]["rejected_images"] = rows[2]["rejected_images"] * 2
            rows[3]["prompt"] = schema.prompt_messages("q")[:1]
            rows[3]["prompt"][0]["content"] = [{"type": "text", "text": "no image block"}]
            rows[4]["rejected"] = schema.response_messages("  ")
        else:
            rows[0]["example_id"] = "train-0000"  # duplicate across splits
            rows[1][schema.REF_CHOSEN] = math.nan
            rows[1][schema.REF_REJECTED] = None
            rows[1][schema.CHOSEN_TOKENS] = 0
            rows[1][schema.REF_CHOSEN_REJECTED_IMAGE] = 3.5
        return rows

    directory = write_build(tmp_path / "b", edit=plant)
    problems = validate(directory)
    assert only(problems, "train-00000-of-00002.arrow row 1 (example_id 'train-0001'): images[0] does not decode")
    assert only(problems, "row 2 (example_id 'train-0002'): rejected_images holds 2 images, expected 1")
    assert only(problems, "train-00001-of-00002.arrow row 0 (example_id 'train-0003'): prompt has 0 image blocks")
    assert only(problems, "train-00001-of-00002.arrow row 1 (example_id 'train-0004'): rejected response is empty")
    assert only(problems, "eval-00000-of-00001.arrow row 0 (example_id 'train-0000'): example_id also used by "
                          "train-00000-of-00002.arrow row 0")
    eval_row = "eval-00000-of-00001.arrow row 1 (example_id 'eval-0001')"
    assert only(problems, f"{eval_row}: ref_chosen_logps is nan: not finite")
    assert only(problems, f"{eval_row}: ref_rejected_logps is null in a scored build")
    assert only(problems, f"{eval_row}: chosen_tokens is 0")
    assert only(problems, f"{eval_row}: ref_chosen_rejected_image_logps is 3.5: a summed log-prob cannot be positive")
    assert len(problems) == 9


def test_unscored_manifest_with_reference_values(tmp_path):
    directory = write_build(tmp_path / "b")
    manifest = manifest_json(directory)
    manifest["reference"] = None
    write_manifest(directory, manifest)
    problems = validate(directory)
    assert only(problems, "train-00000-of-00002.arrow: 3 row(s) carry ref_chosen_logps but manifest.json "
                          "says the build is not scored")


def test_scorer_skips_must_match_the_manifest(tmp_path):
    directory = write_build(tmp_path / "b")
    manifest = manifest_json(directory)
    manifest["reference"]["skipped"] = {"too_long": 0}
    write_manifest(directory, manifest)
    assert validate(directory) == ["1 row(s) have no reference log-probs, manifest reference.skipped counts 0"]


def test_problems_are_capped_per_kind_with_a_count(tmp_path):
    def break_images(split, rows):
        for row in rows:
            row["images"] = [{"bytes": b"", "path": None}]
        return rows

    directory = write_build(tmp_path / "b", n_train=25, n_eval=0, shard_size=25, edit=break_images)
    problems = validate(directory, max_per_kind=10)
    assert len(only(problems, "has no embedded bytes")) == 10
    assert problems[-1] == "... and 15 more image problems"
    assert len(validate(directory, max_per_kind=100)) == 25
