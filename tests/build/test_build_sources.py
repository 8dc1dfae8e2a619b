"""End-to-end builds from every source layout, with every kind of bad input, through the CLI.

Each bad row must end as a counted skip with its reason in the manifest (or a clear error),
never a traceback and never a silent loss: rows read = rows written + rows skipped.
"""

from __future__ import annotations

import io
import sys

import pytest
from fixtures import (
    make_llava_instruct,
    make_mdpo_json,
    make_rlaif_v_parquet,
    make_trl_pairs,
    make_vlfeedback_jsonl,
    make_vlfeedback_parquet,
)
from PIL import Image
from cli_helpers import rows_of, run_cli

from mdpo_data.format import schema
from cli_helpers import manifest_json


pytestmark = pytest.mark.slow  # every test here runs a build through the CLI


def assert_images_are_clean_rgb(rows):
    for row in rows:
        for cell in (row["images"][0], row["rejected_images"][0]):
            image = Image.open(io.BytesIO(cell["bytes"]))
            assert image.format in ("JPEG", "PNG") and image.mode == "RGB"


@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_silkie_jsonl_with_every_bad_input(tmp_path, layout):
    built = make_vlfeedback_jsonl(tmp_path / "src", rows=30, seed=1, images=layout, bad=True)
    out = tmp_path / "out"
    proc = run_cli("build", "--source", "silkie", "--source-path", built.root, "--n", 1000,
                   "--max-pixels", 5_000_000, "--out", out, "--quiet")
    assert "Traceback" not in proc.stderr
    manifest = manifest_json(out)
    skipped = manifest["counts"]["skipped"]
    # Row-level problems, found while reading the source ...
    assert skipped["malformed_json"] == 1
    assert skipped["rating_tie"] >= 1
    assert skipped["non_numeric_rating"] >= 1
    # ... and image problems, found by the workers.
    for reason in ("image_missing", "image_truncated", "image_too_many_pixels"):
        assert skipped.get(reason, 0) >= 1, (reason, skipped)
    # the corrupt JPEG (garbage after a valid header) reads as corrupt or truncated
    assert skipped.get("image_corrupt", 0) + skipped["image_truncated"] >= 2
    rows = rows_of(out)
    assert len(rows) == manifest["counts"]["written"]
    image_stage = manifest["counts"]["skipped_by_stage"]["images"]
    assert manifest["counts"]["sampled"] == manifest["counts"]["written"] + sum(image_stage.values())
    assert_images_are_clean_rgb(rows)  # L / P / RGBA / CMYK sources were converted
    assert not any("†source" in r["chosen"][0]["content"][0]["text"] for r in rows)
    ids = [r["example_id"] for r in rows]
    assert len(set(ids)) == len(ids)  # VLFeedback ids repeat; example ids never do


def test_silkie_parquet_with_embedded_images(tmp_path):
    built = make_vlfeedback_parquet(tmp_path / "src", rows=24, seed=2)
    out = tmp_path / "out"
    run_cli("build", "--source", "silkie", "--source-path", built.root, "--n", 10, "--seed", 1,
            "--out", out, "--quiet")
    rows = rows_of(out)
    assert len(rows) == 10
    assert_images_are_clean_rgb(rows)


def test_silkie_subset_llava_keeps_only_llava_ids(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path / "src", rows=40, seed=3)
    out = tmp_path / "out"
    run_cli("build", "--source", "silkie", "--source-path", built.root, "--subset", "llava",
            "--n", 1000, "--out", out, "--quiet")
    rows = rows_of(out)
    assert rows and all(r["source_id"].startswith("llava-") for r in rows)


def test_zip_member_escaping_its_target_is_never_read(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path / "src", rows=10, seed=4, bad=("escaping_id",))
    out = tmp_path / "out"
    proc = run_cli("build", "--source", "silkie", "--source-path", built.root, "--n", 100,
                   "--out", out, "--quiet")
    assert "Traceback" not in proc.stderr
    skipped = manifest_json(out)["counts"]["skipped"]
    assert skipped.get("zip_member_escapes_target", 0) + skipped.get("image_path_escapes_root", 0) >= 1
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "src" / "evil.jpg").exists()


def test_mdpo_json_with_bad_paths(tmp_path):
    built = make_mdpo_json(tmp_path / "src", rows=20, seed=5, bad=True)
    out = tmp_path / "out"
    proc = run_cli("build", "--source", "pairs", "--source-path", built.data, "--image-root",
                   built.images, "--n", 100, "--rejected", "swap", "--out", out, "--quiet")
    assert "Traceback" not in proc.stderr
    manifest = manifest_json(out)
    assert manifest["counts"]["skipped"].get("image_path_escapes_root", 0) >= 1
    rows = rows_of(out)
    assert rows and not any("ASSISTANT:" in schema.question_of(r["prompt"]) for r in rows)
    # --system-prompt auto keeps the json's own system prompt as a system message
    assert all(r["prompt"][0]["role"] == "system" and schema.system_of(r["prompt"]).startswith("A chat")
               for r in rows)
    assert set(manifest_json(out)["system_prompt"]["rows_by_origin"]) == {"source"}
    for r in rows:
        assert r["images"][0]["bytes"] != r["rejected_images"][0]["bytes"]


@pytest.mark.parametrize("maker", [make_rlaif_v_parquet, make_trl_pairs])
def test_pairs_formats_build(tmp_path, maker):
    built = maker(tmp_path / "src", rows=12, seed=6)
    out = tmp_path / "out"
    run_cli("build", "--source", "pairs", "--source-path", built.root, "--n", 12,
            "--out", out, "--quiet")
    counts = manifest_json(out)["counts"]
    assert len(rows_of(out)) == counts["written"] >= 10
    assert counts["written"] + counts["skipped"].get("missing_rejected_response", 0) == 12


def test_llava_instruct_without_bootstrapping_says_what_to_do(tmp_path):
    built = make_llava_instruct(tmp_path / "src", rows=10, seed=7)
    proc = run_cli("build", "--source", "llava-instruct", "--source-path", built.data,
                   "--image-root", built.images, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 1
    assert "--rejected-response" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_source_path_is_a_clear_error(tmp_path):
    proc = run_cli("build", "--source", "pairs", "--source-path", tmp_path / "nope.json",
                   "--out", tmp_path / "out", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "nope.json" in proc.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
