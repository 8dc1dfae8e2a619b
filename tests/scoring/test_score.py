"""The score stage: exact stored values, too-long rows, resume, re-score, fingerprints."""

import json
import shutil

import pyarrow as pa
import pytest
from score_fixtures import load, make_build, manual_logp

from mdpo_data.scoring import logprobs

from mdpo_data.format import schema
from mdpo_data.format.manifest import write_manifest
from cli_helpers import manifest_json
from mdpo_data.scoring.stage import ScoreError, marker_path, score_build, unscored_rows
from mdpo_data.format.shards import read_shard, shard_files, sha256_file
from mdpo_data.demo.tiny import build_tiny_llava, build_tiny_qwen2_vl

TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:.*SMOKE-TEST.*")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def scored(tmp_path_factory, llava_dir):
    """One build scored with prefix reuse and the no-image diagnostic; row 3 is too long."""
    build = make_build(tmp_path_factory.mktemp("build") / "b", shard_rows=(4, 3), eval_rows=(2,),
                       long_rows=(3,))
    stats = score_build(build, str(llava_dir), max_length=120, no_image_logps=True, progress=False)
    return build, stats


def _all_rows(build):
    rows = []
    for split in schema.SPLITS:
        for file in shard_files(build, split):
            rows.extend(read_shard(file).to_pylist())
    return rows


@pytest.mark.slow
def test_every_stored_value_equals_an_unbatched_forward(scored, llava_dir):
    build, stats = scored
    model, processor = load(llava_dir)
    assert stats["prefix_reuse"] is True
    checked = 0
    for row in _all_rows(build):
        if row[schema.REF_CHOSEN] is None:
            continue
        seqs = logprobs.row_sequences(row, no_image=True)
        for column, seq in seqs.items():
            want, count = manual_logp(model, processor, seq.image, seq.question, seq.response)
            assert row[column] == pytest.approx(want, abs=TOL), (row["example_id"], column)
            checked += 1
            if column == schema.REF_CHOSEN:
                assert row[schema.CHOSEN_TOKENS] == count
            if column == schema.REF_REJECTED:
                assert row[schema.REJECTED_TOKENS] == count
    assert checked == 5 * 8


def test_too_long_rows_keep_null_reference_and_are_counted(scored):
    build, stats = scored
    manifest = manifest_json(build)
    reference = manifest["reference"]
    assert stats["skipped"] == {"too_long": 1} and reference["skipped"] == {"too_long": 1}
    rows = {row["example_id"]: row for row in _all_rows(build)}
    assert all(rows["ex-0003"][name] is None for name in schema.REFERENCE_COLUMNS)
    assert reference["rows_scored"] == 8
    table = pa.concat_tables([read_shard(f) for f in shard_files(build, "train")])
    assert unscored_rows(table) == 1


def test_manifest_reference_and_checksums(scored):
    build, _ = scored
    manifest = manifest_json(build)
    reference = manifest["reference"]
    assert reference["scored"] is True and reference["no_image_logps"] is True
    assert set(reference["columns"]) == set(schema.REFERENCE_COLUMNS)
    assert reference["fingerprint"]["max_length"] == 120
    assert reference["fingerprint"]["smoke_test"] is True
    for split, entries in manifest["splits"].items():
        for entry in entries:
            assert entry["sha256"] == sha256_file(build / entry["file"])
            assert read_shard(build / entry["file"]).schema.equals(schema.arrow_schema())


def test_batch_size_recorded_and_peak_memory_reported(scored):
    from mdpo_data.report.card import render_card

    build, stats = scored
    assert manifest_json(build)["reference"]["batch_size"] == stats["batch_size"] == 8  # CPU default
    assert stats["peak_memory_source"] == "peak RSS of the process"
    assert 0.05 < stats["peak_memory_gib"] < 64  # a Python process with torch loaded
    assert "Scored in micro-batches of 8 sequences" in render_card(build)


def test_rescore_same_fingerprint_is_a_noop(scored, llava_dir):
    build, _ = scored
    before = {p.name: p.stat().st_mtime_ns for p in build.iterdir() if p.is_file()}
    stats = score_build(build, str(llava_dir), max_length=120, no_image_logps=True, progress=False)
    assert stats["shards_scored"] == 0 and stats["shards_skipped"] == 3
    after = {p.name: p.stat().st_mtime_ns for p in build.iterdir() if p.is_file()}
    assert before == after  # neither the shards nor the manifest were rewritten


@pytest.mark.slow
def test_prefix_path_batch_size_and_plain_path_agree(scored, llava_dir, tmp_path):
    build, _ = scored
    stored = _all_rows(build)
    plain = make_build(tmp_path / "plain", shard_rows=(4, 3), eval_rows=(2,), long_rows=(3,))
    stats = score_build(plain, str(llava_dir), max_length=120, no_image_logps=True, progress=False,
                        prefix_reuse="off", batch_size=1)
    assert stats["prefix_reuse"] is False
    for a, b in zip(stored, _all_rows(plain)):
        for name in schema.REFERENCE_COLUMNS:
            if a[name] is None:
                assert b[name] is None
            else:
                assert a[name] == pytest.approx(b[name], abs=TOL)


@pytest.mark.slow
def test_resume_rescoring_only_unfinished_shards(llava_dir, tmp_path):
    build = make_build(tmp_path / "b", shard_rows=(3, 2), eval_rows=(2,))
    # an "interrupted" run: the second train shard has a corrupt image, scoring stops there
    bad = build / "train-00001-of-00002.arrow"
    good_bytes = bad.read_bytes()
    table = read_shard(bad)
    rows = table.to_pylist()
    rows[1]["images"] = [{"bytes": b"not an image", "path": None}]
    shutil.copy(bad, tmp_path / "keep.arrow")
    from mdpo_data.format.shards import write_shard

    write_shard(bad, [rows])
    manifest = manifest_json(build)  # built that way: the manifest vouches for the bad bytes
    manifest["splits"]["train"][1]["sha256"], good_sha = sha256_file(bad), manifest["splits"]["train"][1]["sha256"]
    write_manifest(build, manifest)
    with pytest.raises(ScoreError, match="ex-0004.*images"):
        score_build(build, str(llava_dir), progress=False)
    first = build / "train-00000-of-00002.arrow"
    assert marker_path(build, first).is_file() and not marker_path(build, bad).is_file()
    assert manifest_json(build)["reference"] is None  # the manifest is only written at the end
    first_bytes = first.read_bytes()
    bad.write_bytes(good_bytes)  # repaired (and its manifest entry with it)
    manifest["splits"]["train"][1]["sha256"] = good_sha
    write_manifest(build, manifest)
    stats = score_build(build, str(llava_dir), progress=False)
    assert stats["shards_scored"] == 2 and stats["shards_skipped"] == 1
    assert first.read_bytes() == first_bytes
    # a deleted marker: only that shard is scored again, to identical bytes
    marker_path(build, first).unlink()
    stats = score_build(build, str(llava_dir), progress=False)
    assert stats["shards_scored"] == 1 and first.read_bytes() == first_bytes


@pytest.mark.slow
def test_other_fingerprint_needs_force(scored, llava_dir, tmp_path):
    build, _ = scored
    copy = tmp_path / "copy"
    shutil.copytree(build, copy)
    with pytest.raises(ScoreError, match="another reference fingerprint.*force"):
        score_build(copy, str(llava_dir), max_length=4096, no_image_logps=True, progress=False)
    old = manifest_json(copy)["reference"]["fingerprint"]["key"]
    stats = score_build(copy, str(llava_dir), max_length=4096, no_image_logps=True, progress=False,
                        force=True)
    new = manifest_json(copy)["reference"]
    assert stats["shards_scored"] == 3 and new["fingerprint"]["key"] != old
    assert new["fingerprint"]["max_length"] == 4096 and new["skipped"] == {"too_long": 0}


@pytest.mark.slow
def test_qwen2_vl_scores_packed_and_exact(qwen_dir, tmp_path):
    build = make_build(tmp_path / "b", shard_rows=(3,), eval_rows=(), sizes=[(56, 56), (112, 84)])
    stats = score_build(build, str(qwen_dir), progress=False)
    assert stats["prefix_reuse"] is True and "M-RoPE positions restarted" in stats["prefix_reuse_reason"]
    model, processor = load(qwen_dir)
    for row in _all_rows(build):
        for column, seq in logprobs.row_sequences(row).items():
            want, _ = manual_logp(model, processor, seq.image, seq.question, seq.response)
            assert row[column] == pytest.approx(want, abs=TOL)


def test_unscored_folder_errors_are_clear(tmp_path, llava_dir):
    with pytest.raises(ValueError, match="manifest.json"):
        score_build(tmp_path, str(llava_dir), progress=False)
    build = make_build(tmp_path / "b", shard_rows=(1,), eval_rows=())
    (build / "train-00000-of-00001.arrow").unlink()
    with pytest.raises(ScoreError, match="listed in manifest.json but missing"):
        score_build(build, str(llava_dir), progress=False)


def test_markers_record_key_and_checksum(scored):
    build, _ = scored
    for file in shard_files(build, "train"):
        marker = json.loads(marker_path(build, file).read_text())
        assert marker["sha256"] == sha256_file(file)
        assert marker["key"] == manifest_json(build)["reference"]["fingerprint"]["key"]


@pytest.mark.slow
def test_two_processes_give_identical_results(llava_dir, tmp_path):
    """torchrun (what `accelerate launch` runs) with 2 CPU ranks on gloo: same bytes as 1 process."""
    import os
    import subprocess
    import sys

    single = make_build(tmp_path / "single", shard_rows=(3, 2, 2), eval_rows=(2,))
    multi = make_build(tmp_path / "multi", shard_rows=(3, 2, 2), eval_rows=(2,))
    score_build(single, str(llava_dir), progress=False)
    script = tmp_path / "run.py"
    script.write_text(
        "import json, os, pathlib, sys, warnings\nwarnings.filterwarnings('ignore')\n"
        "from mdpo_data.scoring.stage import score_build\n"
        "stats = score_build(sys.argv[1], sys.argv[2], progress=False)\n"
        "out = pathlib.Path(sys.argv[3]) / f\"rank{os.environ['RANK']}.json\"\n"
        "out.write_text(json.dumps([stats['world_size'], stats['shards_scored']]))\n"
    )
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
         str(script), str(multi), str(llava_dir), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert per_rank == [[2, 2], [2, 2]]  # 4 shards split between the ranks
    for file in sorted(p.name for p in single.iterdir() if p.is_file()):
        assert (multi / file).read_bytes() == (single / file).read_bytes(), file
