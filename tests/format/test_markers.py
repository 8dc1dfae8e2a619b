"""Stage markers: one module for where build/score/BPO markers live, how they are read, and
the manifest numbers merged from them (a resumed stage reports what a clean run does)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from mdpo_data.format import markers as stage_state
from mdpo_data.format.folder import STATE_DIR
from cli_helpers import manifest_json
from mdpo_data.scoring.stage import marker_path


BUILT = stage_state.BuildMarker(key="k", rows_key="r", rows=3, sha256="x", skipped={"image_corrupt": 1})
SCORED = stage_state.ScoreMarker(key="f", rows=3, sha256="y", skipped={"too_long": 0}, shard="s",
                                 split="train", no_image_logps=False, method="packed", batch_size=8)


def test_markers_round_trip_and_torn_ones_read_as_missing(tmp_path):
    shard = "train-00000-of-00001.arrow"
    stage_state.record(tmp_path, BUILT, shard)
    assert stage_state.read_marker(tmp_path, "build", shard) == BUILT
    stage_state.record(tmp_path, SCORED, shard)
    assert stage_state.read_marker(tmp_path, "score", shard) == SCORED
    assert stage_state.read_marker(tmp_path, "build", shard) == BUILT  # a later stage keeps it
    # the score stage's public path is the same file
    assert marker_path(tmp_path, tmp_path / shard) == tmp_path / STATE_DIR / f"score-{shard}.json"
    path = stage_state.marker_path(tmp_path, "build", shard)
    path.write_bytes(path.read_bytes()[:5])  # torn by a kill mid-write (not atomic)
    assert stage_state.read_marker(tmp_path, "build", shard) is None
    path.write_text("[1, 2]")
    assert stage_state.read_marker(tmp_path, "build", shard) is None
    stage_state.drop_markers(tmp_path, shard)
    assert not list((tmp_path / STATE_DIR).glob("*.json"))


# --------------------------------------------------------------------------- one stage's rules


def _shard(directory, name, data: bytes, stage: str, **fields):
    (directory / name).write_bytes(data)
    from mdpo_data.format.shards import sha256_file

    base = BUILT if stage == "build" else SCORED
    marker = dataclasses.replace(base, rows=1, skipped={}, sha256=sha256_file(directory / name), **fields)
    stage_state.record(directory, marker, name)
    return marker


def test_the_latest_writer_gives_the_hash_and_an_earlier_rewrite_drops_later_markers(tmp_path):
    shard = "train-00000-of-00001.arrow"
    built = _shard(tmp_path, shard, b"built", "build", key="k")
    assert stage_state.shard_sha256(tmp_path, shard) == built.sha256
    assert stage_state.vouched_sha256(tmp_path, shard) == built.sha256
    scored = _shard(tmp_path, shard, b"scored", "score", key="f")
    assert stage_state.shard_sha256(tmp_path, shard) == scored.sha256 != built.sha256
    assert stage_state.vouched_sha256(tmp_path, shard) == scored.sha256
    (tmp_path / shard).write_bytes(b"edited")  # changed after its last stage: vouched by nobody
    assert stage_state.vouched_sha256(tmp_path, shard) is None
    rebuilt = _shard(tmp_path, shard, b"rebuilt", "build", key="k")  # re-made: score's is stale
    assert stage_state.read_marker(tmp_path, "score", shard) is None
    assert stage_state.shard_sha256(tmp_path, shard) == rebuilt.sha256


def test_completion_needs_the_stage_key_and_well_formed_counts():
    good = {"stage": "build", "key": "k", "rows_key": "r", "rows": 2, "sha256": "x",
            "skipped": {"image_corrupt": 1}}

    def complete(data, key="k", stage="build"):
        return stage_state.is_complete(stage_state.parse_marker(stage, data), key)

    assert complete(good)
    assert not complete(good, "other")  # a marker from another key
    assert not complete({**good, "key": None})
    assert not complete({**good, "rows": "2"})
    assert not complete({**good, "rows": True})  # JSON true is not a count
    assert not complete({**good, "skipped": {"x": "1"}})
    assert not complete({**good, "rows": -1})  # a count below zero is not a count
    assert not complete({**good, "skipped": {"x": -2}})  # (it was merged into the manifest)
    assert not complete({k: v for k, v in good.items() if k != "sha256"})  # partial
    assert not complete(good, stage="score")  # another stage's marker
    assert not complete(["k"])
    old = {k: v for k, v in good.items() if k not in ("stage", "key")}  # before typed markers
    assert complete({**old, "config_key": "k"})  # the build's key was "config_key"


def test_merged_skips_sum_by_reason_and_keep_zero_counts():
    markers = [dataclasses.replace(BUILT, skipped=s) for s in ({"too_long": 0}, {"b": 2, "a": 1}, {"b": 3})]
    assert stage_state.merge_skips(markers) == {"a": 1, "b": 5, "too_long": 0}
    assert list(stage_state.merge_skips(markers)) == ["a", "b", "too_long"]
    assert stage_state.merge_skips([]) == {}


def test_bpo_marker_from_another_key_is_ignored(tmp_path):
    marker = stage_state.BpoMarker(part="train", key="abc", settings_key="k", rows=3, sha256="s",
                                   skipped={"rejected_empty": 1}, unanswered={"id-1": ["image_missing", "x"]})
    stage_state.write_bpo_marker(tmp_path, marker)
    assert stage_state.read_bpo_marker(tmp_path, "train", "abc") == marker
    assert stage_state.read_bpo_marker(tmp_path, "train", "other") is None
    assert stage_state.read_bpo_marker(tmp_path, "eval", "abc") is None
    stage_state.bpo_marker_path(tmp_path, "train").write_bytes(b'{"key": "abc", "rows"')  # torn
    assert stage_state.read_bpo_marker(tmp_path, "train", "abc") is None


# --------------------------------------------------------------------------- build: counts from markers


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A silkie build with corrupt and truncated images (counted skips) over several shards."""
    from fixtures import make_vlfeedback_jsonl

    from mdpo_data.build.stage import run_build

    from mdpo_data.config.build import BuildConfig

    root = tmp_path_factory.mktemp("stage-state")
    built = make_vlfeedback_jsonl(root / "src", rows=10, seed=4, bad=["corrupt_image", "truncated_image"])
    config = BuildConfig(source="silkie", source_path=str(built.root), n=40, shard_size=5,
                         eval_fraction=0.2)
    out = root / "clean"
    run_build(config, out, progress=False)
    return config, out


def _markers(directory):
    return {p.name[: -len(".json")]: stage_state.parse_marker("build", json.loads(p.read_text()))
            for p in (directory / STATE_DIR).glob("*.arrow.json") if not p.name.startswith("score-")}


def test_the_fixture_has_image_skips_in_some_shards_only(clean):
    _, out = clean
    with_skips = [name for name, m in _markers(out).items() if m.skipped]
    assert with_skips and len(with_skips) < len(_markers(out))
    counts = manifest_json(out)["counts"]
    assert counts["skipped_by_stage"]["images"] == stage_state.merge_skips(_markers(out).values())
    assert sum(counts["skipped_by_stage"]["images"].values()) >= 2  # the two bad images' pairs


def test_an_interrupted_build_resumes_to_the_clean_runs_counts(clean, tmp_path):
    from mdpo_data.build.stage import run_build

    config, reference = clean
    out = tmp_path / "resumed"
    written = []

    def stop_after_two(name):
        written.append(name)
        if len(written) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_build(config, out, progress=False, after_shard=stop_after_two)
    result = run_build(config, out, progress=False)
    assert result.shards_reused == 2 and result.shards_written == len(_markers(reference)) - 2
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()


def test_skips_of_reused_shards_survive_a_resume(clean, tmp_path):
    """Shards without skips are re-made; the image skips come only from the reused shards'
    markers, and the manifest is the clean run's, byte for byte."""
    from mdpo_data.build.stage import run_build

    config, reference = clean
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    kept = {name for name, m in _markers(out).items() if m.skipped}
    for name in set(_markers(out)) - kept:
        (out / name).unlink()
    result = run_build(config, out, progress=False)
    assert result.shards_reused == len(kept) and result.shards_written == len(_markers(out)) - len(kept)
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()


def test_a_build_marker_from_another_key_is_ignored(clean, tmp_path):
    from mdpo_data.build.stage import run_build

    config, reference = clean
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    name = sorted(_markers(out))[0]
    marker = stage_state.read_marker(out, "build", name)
    stage_state.record(out, dataclasses.replace(marker, key="0" * 16, skipped={"bogus": 9}), name)
    result = run_build(config, out, progress=False)
    assert result.shards_written == 1 and result.shards_reused == len(_markers(out)) - 1
    assert stage_state.read_marker(out, "build", name) == marker  # re-made, same marker
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()


# --------------------------------------------------------------------------- score: counts from markers


@pytest.mark.slow
def test_score_resume_reports_the_clean_runs_reference(tmp_path):
    """A score run killed before its manifest write, with a shard's marker lost: the re-run
    scores that shard only, and the too-long skip of a reused shard comes from its marker."""
    from score_fixtures import make_build

    from mdpo_data.format.manifest import write_manifest
    from mdpo_data.scoring.stage import score_build
    from mdpo_data.demo.tiny import tiny_model_path

    model = str(tiny_model_path())
    clean_dir = make_build(tmp_path / "clean", shard_rows=(4, 3), eval_rows=(2,), long_rows=(1,))
    with pytest.warns(UserWarning, match="SMOKE-TEST"):
        score_build(clean_dir, model, max_length=120, progress=False)
    clean_ref = manifest_json(clean_dir)["reference"]
    assert clean_ref["skipped"] == {"too_long": 1}

    out = make_build(tmp_path / "resumed", shard_rows=(4, 3), eval_rows=(2,), long_rows=(1,))
    with pytest.warns(UserWarning, match="SMOKE-TEST"):
        score_build(out, model, max_length=120, progress=False)
    manifest = manifest_json(out)
    manifest["reference"] = None
    write_manifest(out, manifest)
    stage_state.marker_path(out, "score", "train-00001-of-00002.arrow").unlink()
    with pytest.warns(UserWarning, match="SMOKE-TEST"):
        stats = score_build(out, model, max_length=120, progress=False)
    assert stats["shards_scored"] == 1 and stats["skipped"] == {"too_long": 0}
    assert manifest_json(out)["reference"] == clean_ref
    assert (out / "manifest.json").read_bytes() == (clean_dir / "manifest.json").read_bytes()


def test_a_build_marker_written_before_typed_markers_is_reused(clean, tmp_path):
    """Markers of an older version (the build's key under "config_key", keys in another
    order) are read the same way: the shards are reused, not re-made."""
    from mdpo_data.build.stage import run_build

    config, reference = clean
    out = tmp_path / "old"
    shutil.copytree(reference, out)
    for name in _markers(out):
        path = stage_state.marker_path(out, "build", name)
        data = json.loads(path.read_text())
        data["config_key"] = data.pop("key")
        path.write_text(json.dumps(data))
    result = run_build(config, out, progress=False)
    assert result.shards_written == 0 and result.shards_reused == len(_markers(out))
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()


def test_a_folder_where_a_marker_belongs_is_one_line_before_any_work(clean, tmp_path):
    """A directory in place of a marker file would make the rebuild fail half-way (the marker
    write); the build says so first and changes nothing."""
    from mdpo_data.build.stage import run_build
    from mdpo_data.format.folder import FolderError

    config, reference = clean
    out = tmp_path / "odd"
    shutil.copytree(reference, out)
    name = sorted(_markers(out))[0]
    marker = stage_state.marker_path(out, "build", name)
    marker.unlink()
    marker.mkdir()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(FolderError, match="is not a file, where mdpo-data keeps one of its state files"):
        run_build(config, out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
