"""Issue 21 (19): planning checks image paths lexically (no realpath per candidate row); the
exact check runs when a sampled row's image is loaded, so a symlink out of the image folder
is still refused, as a counted skip, and its target's bytes never reach a shard."""

from __future__ import annotations

from cli_helpers import rows_of, run_cli
from fixtures import jpeg_bytes, make_vlfeedback_jsonl

from cli_helpers import manifest_json


def test_a_symlink_out_of_the_image_folder_is_refused_at_load(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path / "src", rows=8, seed=2, images="folder")
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg_bytes(99))
    victim = sorted(built.images.rglob("*.jpg"))[0]
    victim.unlink()
    victim.symlink_to(secret)
    out = tmp_path / "out"
    run_cli("build", "--source", "silkie", "--source-path", built.root, "--n", 1000, "--out", out, "--quiet")
    skipped = manifest_json(out)["counts"]["skipped"]
    assert skipped.get("image_path_escapes_root", 0) >= 1, skipped  # each pair of that row
    stored = {row["images"][0]["bytes"] for row in rows_of(out)}
    assert secret.read_bytes() not in stored and rows_of(out)
