"""What `score` reports, through the real CLI: a 10 MB answer is a too-long row without being
tokenized; a shard records `prefix-packed` only when every batch was packed (else how many fell
back and why); the card never says "No rows were skipped" when the scorer dropped rows; validate
refuses a build whose every train row was dropped; and after an interrupted score, validate, card
and inspect say to re-run `score`, which finishes it."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_helpers import run_cli
from fixtures import make_mdpo_json

from mdpo_data.demo.tiny import build_tiny_llava
from cli_helpers import manifest_json
from mdpo_data.format.markers import read_marker

pytestmark = pytest.mark.filterwarnings("ignore:.*SMOKE-TEST.*")
HUGE = "word " * 2_000_000  # 10 MB


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "model")


def _build(tmp_path, out, rows=6, edits=None, shard_size=3):
    """A pairs build from a JSON lines copy of the mDPO json, `edits` {row: {key: value}}."""
    built = make_mdpo_json(tmp_path / "src", rows=rows, seed=4)
    records = json.loads(built.data.read_text())
    for row, change in (edits or {}).items():
        records[row].update(change)
    data = tmp_path / "src" / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    run_cli("build", "--source", "pairs", "--source-path", data, "--image-root", built.images,
            "--n", rows, "--shard-size", shard_size, "--eval-fraction", 0, "--quiet", "--out", out)
    return out


def _score(out, tiny, max_length, check=True):
    return run_cli("score", out, "--ref-model", tiny, "--max-length", max_length, "--batch-size", 4,
                   "--quiet", check=check)


@pytest.mark.slow
def test_huge_text_is_too_long_untokenized_and_fallbacks_are_recorded(tiny, tmp_path):
    out = _build(tmp_path, tmp_path / "o", edits={1: {"chosen": HUGE}, 4: {"rejected": "long " * 150}})
    proc = _score(out, tiny, 200)
    stats = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip().startswith("score:")
                 for line in [line.strip().removeprefix("score: ")])
    assert int(stats["responses_too_long_untokenized"]) == 3  # the whole row: its 3 sequences
    reference = manifest_json(out)["reference"]
    assert reference["skipped"] == {"too_long": 2}
    first = read_marker(out, "score", "train-00000-of-00002.arrow")
    second = read_marker(out, "score", "train-00001-of-00002.arrow")
    assert first.method == "prefix-packed"  # the huge row never reached a batch
    assert second.method.startswith("plain in 1 of ") and "a sequence is longer than max_length" \
        in second.method and "prefix-packed in " in second.method
    card = (out / "README.md").read_text()
    assert "No rows were skipped" not in card
    assert "the reference scorer dropped 2 row(s)" in card
    assert run_cli("validate", out).returncode == 0


@pytest.mark.slow
def test_validate_refuses_a_build_whose_every_train_row_was_dropped(tiny, tmp_path):
    out = _build(tmp_path, tmp_path / "o", rows=3)
    _score(out, tiny, 20)
    assert manifest_json(out)["reference"]["skipped"] == {"too_long": 3}
    proc = run_cli("validate", out, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "the scorer dropped all 3 rows (longer than max_length 20)" in proc.stdout + proc.stderr
    assert "No rows were skipped" not in (out / "README.md").read_text()


@pytest.mark.slow
def test_after_an_interrupted_score_every_reader_says_rerun_score(tiny, tmp_path):
    out = _build(tmp_path, tmp_path / "o")
    unscored_manifest = (out / "manifest.json").read_bytes()
    _score(out, tiny, 512)
    scored_manifest = (out / "manifest.json").read_bytes()
    # the state a score killed after rewriting its shards, before its manifest update, leaves
    (out / "manifest.json").write_bytes(unscored_manifest)
    for command in (["validate", out], ["card", out], ["inspect", out]):
        proc = run_cli(*command, check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "Traceback" not in output, output
        assert "still running or was interrupted" in output and f"mdpo-data score {out}" in output
        assert "rebuild or restore" not in output
    _score(out, tiny, 512)  # re-running score finishes it: the same manifest as uninterrupted
    assert (out / "manifest.json").read_bytes() == scored_manifest
    assert run_cli("validate", out).returncode == 0


def test_a_shard_edited_by_hand_still_says_rebuild_or_restore(tmp_path):
    out = _build(tmp_path, tmp_path / "o", rows=3)
    shard = out / "train-00000-of-00001.arrow"
    shard.write_bytes(shard.read_bytes() + b"\0")
    proc = run_cli("card", out, check=False)
    assert proc.returncode != 0 and "rebuild or restore" in proc.stderr
    shutil.rmtree(out)
