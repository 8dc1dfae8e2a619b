"""Issue 21 (8): a resumed build identifies a file image by its content. An image edited in
place to the same size with its old mtime restored (what a resume key of size and mtime
misses) re-makes the shard that holds it, through the real `mdpo-data build` command; an
untouched source still reuses every shard."""

from __future__ import annotations

import os

import pytest

from cli_helpers import folder_bytes, run_cli
from fixtures import make_vlfeedback_jsonl

ARGS = ("--source", "silkie", "--n", 8, "--shard-size", 4, "--seed", 3, "--quiet")


def edit_in_place(path) -> None:
    """Other bytes, same size, same mtime."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


@pytest.mark.slow
def test_a_same_size_edit_with_the_old_mtime_rebuilds_its_shard(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path / "src", rows=16, seed=4, images="folder")
    out = tmp_path / "out"
    run_cli("build", "--source-path", built.root, "--out", out, *ARGS)
    before = folder_bytes(out)
    run_cli("build", "--source-path", built.root, "--out", out, *ARGS)  # nothing changed
    assert folder_bytes(out) == before

    for image in sorted(built.images.rglob("*.jpg")):
        edit_in_place(image)
    run_cli("build", "--source-path", built.root, "--out", out, *ARGS)
    fresh = tmp_path / "fresh"
    run_cli("build", "--source-path", built.root, "--out", fresh, *ARGS)
    assert folder_bytes(out) == folder_bytes(fresh) != before


def test_a_marker_whose_row_count_was_edited_remakes_its_shard(tmp_path):
    """A build marker is trusted only for the rows its shard holds: a hand-edited `rows` re-makes
    the shard instead of writing a wrong count into manifest.json."""
    import json

    out = tmp_path / "out"
    run_cli("build", "--source", "demo", "--n", 8, "--out", out, "--quiet")
    before = folder_bytes(out)
    marker = out / ".state" / "train-00000-of-00001.arrow.json"
    data = json.loads(marker.read_bytes())
    marker.write_text(json.dumps({**data, "rows": 3}))
    run_cli("build", "--source", "demo", "--n", 8, "--out", out, "--quiet")
    assert folder_bytes(out) == before
    assert run_cli("validate", out, check=False).returncode == 0
