"""The ownership rule, through the real CLIs: every command that writes (build, score, card,
preview, push --dry-run, mdpo-train) refuses a non-empty folder that is not ours, never follows
a symlink in its own bookkeeping, deletes on --overwrite only names it recognises, and keeps a
README.md the user edited."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures import make_trl_pairs
from PIL import Image

from mdpo_data.config.build import BuildConfig
from mdpo_data.cli import main as mdpo_data
from mdpo_data.format.folder import TRAIN_MARK, is_our_preview
from mdpo_train.cli import main as mdpo_train

DEMO = ["build", "--source", "demo", "--n", "8", "--quiet"]


def cli(*args, command=mdpo_data):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    """The error of a refused command: exit nonzero, no traceback, one `Error:` line."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if "Error" in line]
    assert len(lines) == 1, result.output
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def built(tmp_path) -> Path:
    out = tmp_path / "o"
    result = cli(*DEMO, "--out", out)
    assert result.exit_code == 0, result.output
    return out


# ------------------------------------------------------------------ symlinked bookkeeping


def test_overwrite_never_deletes_through_a_symlinked_state_dir(built, tmp_path):
    victim = tmp_path / "v"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    shutil.rmtree(built / ".state")
    (built / ".state").symlink_to(victim, target_is_directory=True)
    for extra in ([], ["--overwrite"]):
        line = one_line_error(cli(*DEMO, "--out", built, *extra))
        assert ".state" in line and "symlink" in line
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.tex"]
    assert (victim / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("name", [".state/lock.pid", ".state/lock", ".state/build.json",
                                  ".state/written.json", ".state/train-00000-of-00001.arrow.json",
                                  "manifest.json", "README.md"])
def test_every_bookkeeping_symlink_is_refused_and_its_target_kept(built, tmp_path, name):
    outside = tmp_path / "outside.txt"
    outside.write_text("mine")
    (built / name).unlink(missing_ok=True)
    (built / name).symlink_to(outside)
    for args in ([*DEMO, "--out", built], [*DEMO, "--out", built, "--overwrite"], ["card", built, "--force"]):
        line = one_line_error(cli(*args))
        assert "symlink" in line, line
    assert outside.read_text() == "mine" and (built / name).is_symlink()


# ------------------------------------------------------------------ --overwrite


def test_overwrite_removes_only_the_names_it_recognises(built):
    (built / "mine.txt").write_text("notes")
    (built / "notes").mkdir()
    (built / "notes" / "a.md").write_text("a")
    (built / ".state" / "my-own.txt").write_text("s")
    result = cli(*DEMO, "--n", "6", "--out", built, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (built / "mine.txt").read_text() == "notes" and (built / "notes" / "a.md").read_text() == "a"
    assert (built / ".state" / "my-own.txt").read_text() == "s"
    assert "left" in result.output and "mine.txt" in result.output  # says what it left
    manifest = json.loads((built / "manifest.json").read_bytes())
    assert manifest["counts"]["requested"] == 6


def test_a_non_empty_folder_that_is_not_ours_is_refused_by_every_writer(tmp_path, built):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("k")
    for args in ([*DEMO, "--out", foreign], [*DEMO, "--out", foreign, "--overwrite"],
                 ["preview", built, "--out", foreign], ["push", built, "--repo", "a/b", "--dry-run", foreign]):
        one_line_error(cli(*args))
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]


# ------------------------------------------------------------------ README.md hand edits


def test_an_edited_readme_is_kept_by_build_and_card_until_card_force(built):
    readme = built / "README.md"
    edited = readme.read_text() + "\nMy own notes.\n"
    readme.write_text(edited)
    result = cli(*DEMO, "--out", built)  # a no-op re-run
    assert result.exit_code == 0 and "--force" in result.output and "mdpo-data card" in result.output
    assert readme.read_text() == edited
    line = one_line_error(cli("card", built))
    assert "--force" in line and readme.read_text() == edited
    assert cli("card", built, "--force").exit_code == 0
    assert "My own notes." not in readme.read_text()
    assert cli("card", built).exit_code == 0  # ours again: rewritten without --force


def test_an_edited_readme_survives_overwrite_and_score(built):
    readme = built / "README.md"
    readme.write_text("# my dataset\n")
    result = cli(*DEMO, "--out", built, "--overwrite")
    assert result.exit_code == 0 and readme.read_text() == "# my dataset\n"
    result = cli("score", built, "--ref-model", "tiny", "--quiet")
    assert result.exit_code == 0, result.output
    assert readme.read_text() == "# my dataset\n" and "--force" in result.output


# ------------------------------------------------------------------ push / Hub export


def test_push_dry_run_empty_is_an_error_never_an_upload(built, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(built.parent)
    before = sorted(p.name for p in built.parent.iterdir())
    line = one_line_error(cli("push", built, "--repo", "someone/data", "--dry-run", ""))
    assert "empty" in line and "pushed" not in line
    assert sorted(p.name for p in built.parent.iterdir()) == before


def test_re_export_never_deletes_a_folder_it_did_not_create(built, tmp_path):
    out = tmp_path / "exp"
    sibling = tmp_path / ".exp.old"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("k")
    for _ in range(2):
        result = cli("push", built, "--repo", "a/b", "--dry-run", out)
        assert result.exit_code == 0, result.output
    assert (sibling / "keep.txt").read_text() == "k"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".exp.old", "exp", "o"]  # no leftovers
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data", "manifest.json"]


def test_push_keeps_the_users_readme_text_and_keys(built, tmp_path):
    readme = built / "README.md"
    text = readme.read_text().replace("---\n", "---\nlanguage:\n- en\n", 1) + "\nHand-written notes.\n"
    readme.write_text(text)
    result = cli("push", built, "--repo", "a/b", "--dry-run", tmp_path / "exp")
    assert result.exit_code == 0, result.output
    exported = (tmp_path / "exp" / "README.md").read_text()
    assert "Hand-written notes." in exported and "- en" in exported and "configs:" in exported


def test_building_into_an_old_hub_export_is_refused(built, tmp_path):
    out = tmp_path / "exp"
    assert cli("push", built, "--repo", "a/b", "--dry-run", out).exit_code == 0
    before = {p: sha(p) for p in out.rglob("*") if p.is_file()}
    for extra in ([], ["--overwrite"]):
        line = one_line_error(cli(*DEMO, "--n", "4", "--out", out, *extra))
        assert "export" in line
    assert {p: sha(p) for p in out.rglob("*") if p.is_file()} == before
    one_line_error(cli("score", out, "--ref-model", "tiny", "--quiet"))
    shutil.copytree(out / "data", built / "data")  # an export's parquet inside a build folder
    assert "data/*.parquet" in one_line_error(cli(*DEMO, "--out", built, "--overwrite"))
    assert sorted(p.name for p in (built / "data").iterdir()) == ["train-00000-of-00001.parquet"]


# ------------------------------------------------------------------ preview


def test_preview_keeps_a_users_preview_and_rejects_an_empty_out(built, tmp_path, monkeypatch):
    target = tmp_path / "p"
    target.mkdir()
    (target / "preview.html").write_text("<p>my page</p>")
    one_line_error(cli("preview", built, "--out", target))
    assert (target / "preview.html").read_text() == "<p>my page</p>"
    monkeypatch.chdir(tmp_path)
    one_line_error(cli("preview", built, "--out", ""))
    assert not (tmp_path / "preview.png").exists()
    fresh = tmp_path / "fresh"
    for _ in range(2):  # ours are recognised and replaced
        assert cli("preview", built, "--out", fresh, "--n", "2").exit_code == 0
    assert is_our_preview(fresh / "preview.png") and is_our_preview(fresh / "preview.html")
    (fresh / "preview.html").write_text("<p>edited by hand</p>")  # next to our preview.png
    assert "preview.html" in one_line_error(cli("preview", built, "--out", fresh))
    assert (fresh / "preview.html").read_text() == "<p>edited by hand</p>"
    (built / "preview.png").write_bytes(b"\x89PNG user's own")
    one_line_error(cli("preview", built))


def test_preview_of_a_30000x1_image(tmp_path):
    pairs = make_trl_pairs(tmp_path / "src", rows=6, fmt="jsonl")
    for i, image in enumerate(sorted(pairs.images.iterdir())):
        strip = io.BytesIO()
        Image.new("RGB", (30000, 1), (200, 10 * i, 10)).save(strip, "PNG")
        image.write_bytes(strip.getvalue())
    out = tmp_path / "o"
    result = cli("build", "--source", "pairs", "--source-path", pairs.data, "--n", "4",
                 "--rejected", "swap", "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    result = cli("preview", out, "--n", "2")
    assert result.exit_code == 0, result.output
    assert Image.open(out / "preview.png").size[0] > 0


# ------------------------------------------------------------------ albumentations pipeline path


def test_a_pipeline_path_is_recorded_portably(tmp_path):
    import albumentations as A

    outs = []
    for where in ("one", "two/deeper"):
        path = tmp_path / where / "pipe.yaml"
        path.parent.mkdir(parents=True)
        A.save(A.Compose([A.HorizontalFlip(p=1.0)]), str(path), data_format="yaml")
        out = tmp_path / f"out-{where.replace('/', '-')}"
        result = cli(*DEMO, "--rejected", f"albumentations:{path}", "--out", out)
        assert result.exit_code == 0, result.output
        assert cli("push", out, "--repo", "a/b", "--dry-run", tmp_path / f"exp-{out.name}").exit_code == 0
        outs.append(out)
    for name in ("manifest.json", "README.md", "train-00000-of-00001.arrow"):
        assert sha(outs[0] / name) == sha(outs[1] / name), name
    for out in outs:
        for path in (out / "manifest.json", out / "README.md", tmp_path / f"exp-{out.name}" / "README.md",
                     tmp_path / f"exp-{out.name}" / "manifest.json"):
            assert str(tmp_path) not in path.read_text(), path
        manifest = json.loads((out / "manifest.json").read_bytes())
        assert manifest["rejected_image"]["spec"] == "albumentations:pipe.yaml"
        assert len(manifest["rejected_image"]["pipeline_sha256"]) == 64
    renamed = tmp_path / "elsewhere.yaml"
    shutil.copy(tmp_path / "one" / "pipe.yaml", renamed)
    keys = {BuildConfig(rejected=f"albumentations:{p}").key() for p in (tmp_path / "one" / "pipe.yaml", renamed)}
    assert len(keys) == 1  # the name and the place of the file do not enter the key


# ------------------------------------------------------------------ mdpo-train --output-dir


def train_args(data, out):
    return ["--shards", data, "--output-dir", out, "--loss", "sft", "--max-steps", "1", "--no-progress"]


def test_train_refuses_a_folder_that_is_not_its_own(built, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.yaml").write_text("mine: true\n")
    result = cli(*train_args(built, run), command=mdpo_train)
    assert result.exit_code != 0 and "--output-dir" in result.output and "not empty" in result.output
    assert (run / "train_config.yaml").read_text() == "mine: true\n" and not (run / TRAIN_MARK).exists()
    for target in (built, "", built / "run", built / ".state" / "run"):  # the data folder, an
        result = cli(*train_args(built, target), command=mdpo_train)  # unset variable, inside it
        assert result.exit_code != 0 and "--output-dir" in result.output, result.output
    result = cli(*train_args(built / "manifest.json", built / "run"), command=mdpo_train)
    assert result.exit_code != 0 and "inside the data folder" in result.output, result.output
    assert sorted(p.name for p in built.iterdir()) == [".state", "README.md", "manifest.json",
                                                       "train-00000-of-00001.arrow"]


@pytest.mark.parametrize("name", ["metrics.jsonl", "train_config.yaml", "checkpoints", TRAIN_MARK])
def test_train_never_follows_a_symlink_in_its_run_folder(built, tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    (run / TRAIN_MARK).write_text('{"kind": "mdpo-train"}')
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("mine")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(outside / "f" if name != "checkpoints" else outside)
    result = cli(*train_args(built, run), command=mdpo_train)
    assert result.exit_code != 0 and "symlink" in result.output, result.output
    assert "Traceback" not in result.output
    assert (outside / "f").read_text() == "mine" and os.listdir(outside) == ["f"]
