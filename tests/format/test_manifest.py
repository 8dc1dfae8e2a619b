"""The typed manifest: one loader (`load_manifest`) that every reader uses, exact round trips
(what a build wrote reads back and writes out byte for byte, a newer minor's fields kept),
and one error line naming the field for a malformed one."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cli_helpers import run_cli
from mdpo_data.format.manifest import (
    Counts, Fingerprint, Manifest, ManifestError, Reference, ShardEntry, dumps, load_manifest, parse_manifest,
    write_manifest,
)


def stored() -> dict:
    """A scored manifest as a build and score write it (in code: no model run)."""
    manifest = Manifest(
        format_version="1.1", command="mdpo-data build --out OUT", config={"n": 2, "source": "demo"},
        counts=Counts(read=2, sampled=2, written=2, written_by_split={"train": 2}),
        splits={"train": [ShardEntry(file="train-00000-of-00001.arrow", rows=2, sha256="0" * 64)]},
        reference=Reference(scored=True, fingerprint=Fingerprint(model="m", key="k", dtype="float32",
                                                                  extra={"weights": "sha256:1"})))
    return json.loads(dumps(manifest))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest") / "demo"
    run_cli("build", "--source", "demo", "--n", 24, "--eval-fraction", 0.25, "--shard-size", 12,
            "--rejected", "noise:400", "--ref-model", "tiny", "--no-image-logps", "--out", out, "--quiet")
    return out


@pytest.mark.slow
def test_a_scored_build_reads_back_typed_and_writes_out_byte_for_byte(scored):
    raw = (scored / "manifest.json").read_bytes()
    manifest = load_manifest(scored)
    assert dumps(manifest) == raw
    assert manifest.scored and manifest.reference.no_image_logps
    assert isinstance(manifest.fingerprint, Fingerprint) and manifest.fingerprint.model == "tiny"
    assert manifest.fingerprint.as_dict() == json.loads(raw)["reference"]["fingerprint"]
    assert [split for split, _ in manifest.entries()] == ["train", "train", "eval"]
    assert all(isinstance(e, ShardEntry) for _, e in manifest.entries())
    assert manifest.counts.written == sum(e.rows for _, e in manifest.entries()) == 24
    # the noise strategy's own record rides along untyped, exactly as stored
    assert set(manifest.rejected_image.extra) == {"model_input", "clipped_share"}


def test_fields_of_a_newer_minor_survive_a_rewrite(tmp_path):
    data = stored()
    data["format_version"] = "1.99"
    data["lineage"] = {"parent": "abc"}
    data["counts"]["dedup_dropped"] = 3
    data["reference"]["fingerprint"]["quantization"] = "int8"
    manifest = parse_manifest(data)
    assert manifest.extra == {"lineage": {"parent": "abc"}} and manifest.counts.extra == {"dedup_dropped": 3}
    (tmp_path / "manifest.json").write_bytes(dumps(dataclasses.replace(manifest, command="edited")))
    again = json.loads((tmp_path / "manifest.json").read_bytes())
    assert again == {**data, "command": "edited"}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("counts"), "field counts is missing"),
    (lambda d: d["counts"].update(written=True), "field counts.written must be a whole number or null, got true"),
    (lambda d: d["splits"]["train"][0].update(rows="12"), 'field splits.train[0].rows must be a whole number, got "12"'),
    (lambda d: d["splits"]["train"][0].pop("sha256"), "field splits.train[0].sha256 is missing"),
    (lambda d: d["reference"].update(fingerprint=[]), "field reference.fingerprint must be an object or null"),
    (lambda d: d["reference"]["fingerprint"].pop("model"), "field reference.fingerprint.model is missing"),
    (lambda d: d["config"].update(n="many"), 'field config.n must be a whole number, got "many"'),
    (lambda d: d["splits"]["train"][0].update(file="../x.arrow"), "not a train shard name inside the folder"),
    (lambda d: d.update(format_version="2.0"), "written by a newer mdpo-data"),
    # a split no reader reads would list shards nobody checks (a missing one passed validate)
    (lambda d: d["splits"].update(test=[dict(d["splits"]["train"][0], file="test-00000-of-00001.arrow")]),
     "field splits.test is not a split (train, eval)"),
    # without it, mdpo-train --model X trained any model on the reference log-probs, unchecked
    (lambda d: d["reference"].update(fingerprint=None), "field reference.fingerprint is missing"),
    (lambda d: d["reference"].update(rows_scored=-1), "field reference.rows_scored must be >= 0, got -1"),
    (lambda d: d["reference"]["fingerprint"].update(max_length=0),
     "field reference.fingerprint.max_length must be >= 1, got 0"),
    (lambda d: d["counts"]["skipped_by_stage"].update(images={"image_corrupt": -1}),
     "field counts.skipped_by_stage.images.image_corrupt must be >= 0, got -1"),
    (lambda d: d["splits"]["train"].append(dict(d["splits"]["train"][0])), "lists the shard train-00000-of-00001.arrow twice"),
])
def test_a_malformed_manifest_is_one_error_naming_the_field(tmp_path, edit, message):
    data = stored()
    edit(data)
    write_manifest(tmp_path, data)
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path)
    assert message in str(caught.value) and str(tmp_path / "manifest.json") in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_manifest_built_in_code_is_what_load_manifest_reads():
    manifest = Manifest(format_version="1.1", config={"n": 2}, counts=Counts(written=2),
                        splits={"train": [ShardEntry(file="train-00000-of-00001.arrow", rows=2, sha256="0" * 64)]},
                        reference=Reference(scored=True, fingerprint=Fingerprint(model="m", key="k")))
    assert parse_manifest(json.loads(dumps(manifest))) == manifest
    assert "export" not in json.loads(dumps(manifest))  # only a Hub export lists its files


def test_a_manifest_lacking_defaulted_fields_is_written_back_as_read():
    """An older or hand-written manifest: fields it lacks are not invented on a rewrite (a
    Hub export copies the build's manifest)."""
    data = stored()
    del data["counts"]["skip_examples"], data["reference"]["batch_size"], data["rejected_response"]
    del data["reference"]["fingerprint"]["revision"], data["command"]
    assert json.loads(dumps(parse_manifest(data))) == data
    manifest = parse_manifest(data)
    assert manifest.counts.skip_examples == {} and manifest.command is None  # the defaults
    rescored = dataclasses.replace(manifest, command="mdpo-data build ...")  # set: written
    assert json.loads(dumps(rescored))["command"] == "mdpo-data build ..."
