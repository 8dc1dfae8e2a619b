"""Stage markers: one module for where build/score/BPO markers live, how they are read, and
the manifest numbers merged from them (a resumed stage reports what a clean run does)."""

from __future__ import annotations

import json
import shutil

import pytest

from mdpo_data.format import markers as stage_state
from mdpo_data.format.folder import STATE_DIR
from mdpo_data.format.manifest import read_manifest
from mdpo_data.scoring.stage import marker_path


def test_markers_round_trip_and_torn_ones_read_as_missing(tmp_path):
    shard = "train-00000-of-00001.arrow"
    stage_state.write_marker(tmp_path, "build", shard, {"rows": 3, "sha256": "x"})
    stage_state.write_marker(tmp_path, "score", shard, {"rows": 3, "key": "k"})
    assert stage_state.read_marker(tmp_path, "build", shard) == {"rows": 3, "sha256": "x"}
    assert stage_state.read_marker(tmp_path, "score", shard) == {"rows": 3, "key": "k"}
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

    marker = {"rows": 1, "skipped": {}, "sha256": sha256_file(directory / name), **fields}
    stage_state.record(directory, stage, name, marker)
    return marker


def test_the_latest_writer_gives_the_hash_and_an_earlier_rewrite_drops_later_markers(tmp_path):
    shard = "train-00000-of-00001.arrow"
    built = _shard(tmp_path, shard, b"built", "build", config_key="k")
    assert stage_state.shard_sha256(tmp_path, shard) == built["sha256"]
    assert stage_state.vouched_sha256(tmp_path, shard) == built["sha256"]
    scored = _shard(tmp_path, shard, b"scored", "score", key="f")
    assert stage_state.shard_sha256(tmp_path, shard) == scored["sha256"] != built["sha256"]
    assert stage_state.vouched_sha256(tmp_path, shard) == scored["sha256"]
    (tmp_path / shard).write_bytes(b"edited")  # changed after its last stage: vouched by nobody
    assert stage_state.vouched_sha256(tmp_path, shard) is None
    rebuilt = _shard(tmp_path, shard, b"rebuilt", "build", config_key="k")  # re-made: score's is stale
    assert stage_state.read_marker(tmp_path, "score", shard) is None
    assert stage_state.shard_sha256(tmp_path, shard) == rebuilt["sha256"]


def test_completion_needs_the_stage_key_and_well_formed_counts():
    good = {"config_key": "k", "rows": 2, "skipped": {"image_corrupt": 1}}
    assert stage_state.is_complete(good, "build", "k")
    assert not stage_state.is_complete(good, "build", "other")  # a marker from another key
    assert not stage_state.is_complete({**good, "config_key": None, "key": "k"}, "build", "k")
    assert not stage_state.is_complete({**good, "rows": "2"}, "build", "k")
    assert not stage_state.is_complete({**good, "skipped": {"x": "1"}}, "build", "k")
    assert not stage_state.is_complete(["k"], "build", "k")


def test_merged_skips_sum_by_reason_and_keep_zero_counts():
    markers = [{"skipped": {"too_long": 0}}, {"skipped": {"b": 2, "a": 1}}, {"skipped": {"b": 3}}]
    assert stage_state.merge_skips(markers) == {"a": 1, "b": 5, "too_long": 0}
    assert list(stage_state.merge_skips(markers)) == ["a", "b", "too_long"]
    assert stage_state.merge_skips([]) == {}


def test_bpo_marker_from_another_key_is_ignored(tmp_path):
    marker = {"stage": "bpo", "key": "abc", "rows": 3, "sha256": "s", "skipped": {"rejected_empty": 1}}
    stage_state.write_bpo_marker(tmp_path, "train", marker)
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
    return {p.name[: -len(".json")]: json.loads(p.read_text())
            for p in (directory / STATE_DIR).glob("*.arrow.json") if not p.name.startswith("score-")}


def test_the_fixture_has_image_skips_in_some_shards_only(clean):
    _, out = clean
    with_skips = [name for name, m in _markers(out).items() if m["skipped"]]
    assert with_skips and len(with_skips) < len(_markers(out))
    counts = read_manifest(out)["counts"]
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
    kept = {name for name, m in _markers(out).items() if m["skipped"]}
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
    stage_state.write_marker(out, "build", name, {**marker, "config_key": "0" * 16, "skipped": {"bogus": 9}})
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
    clean_ref = read_manifest(clean_dir)["reference"]
    assert clean_ref["skipped"] == {"too_long": 1}

    out = make_build(tmp_path / "resumed", shard_rows=(4, 3), eval_rows=(2,), long_rows=(1,))
    with pytest.warns(UserWarning, match="SMOKE-TEST"):
        score_build(out, model, max_length=120, progress=False)
    manifest = read_manifest(out)
    manifest["reference"] = None
    write_manifest(out, manifest)
    stage_state.marker_path(out, "score", "train-00001-of-00002.arrow").unlink()
    with pytest.warns(UserWarning, match="SMOKE-TEST"):
        stats = score_build(out, model, max_length=120, progress=False)
    assert stats["shards_scored"] == 1 and stats["skipped"] == {"too_long": 0}
    assert read_manifest(out)["reference"] == clean_ref
    assert (out / "manifest.json").read_bytes() == (clean_dir / "manifest.json").read_bytes()
