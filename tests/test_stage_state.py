"""Stage markers: one module for where build/score markers live and how they are read."""

from __future__ import annotations

from mdpo_data import stage_state
from mdpo_data.folder import STATE_DIR
from mdpo_data.score import marker_path


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
