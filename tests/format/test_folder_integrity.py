"""Issue 9: data folders you can trust. Each test reproduces one reported defect through the
real `mdpo-data` CLI (click's CliRunner in-process, a subprocess where a process boundary
matters) and checks that it now gives a clear one-line error or the correct result, and that
nothing outside the target folder changed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures import make_trl_pairs, make_vlfeedback_jsonl

from mdpo_data.format import schema
from mdpo_data.build.stage import run_build
from mdpo_data.config.build import BuildConfig
from mdpo_data.cli import main
from cli_helpers import manifest_json
from mdpo_data.format.shards import read_shard, sha256_file, write_shard

CLI = [sys.executable, "-m", "mdpo_data.cli"]


def cli(*args) -> tuple[int, str]:
    """Run `mdpo-data ARGS` in-process; (exit code, stdout + stderr)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a failure of the test
    return result.exit_code, result.output


def one_error(output: str) -> str:
    """The single `Error: ...` line of a failed command (asserts there is exactly one)."""
    lines = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output
    return lines[0]


def tree(path: Path) -> dict[str, str]:
    """Every file under `path` -> its sha256 (to show nothing changed)."""
    return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A small unscored demo build (2 train shards), built once for the read-only tests."""
    out = tmp_path_factory.mktemp("built") / "d"
    code, output = cli("build", "--source", "demo", "--n", 6, "--shard-size", 3, "--out", out, "--quiet")
    assert code == 0, output
    return out


def copy_build(built: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(built, target)
    return target


# ------------------------------------------------------------------ 1, 2, 3: never touch what isn't ours


def test_1_push_dry_run_refuses_a_foreign_folder_and_one_inside_dir(built, tmp_path):
    proj = tmp_path / "proj"
    (proj / "data" / "raw").mkdir(parents=True)
    (proj / "data" / "raw" / "labels.csv").write_text("x\n")
    (proj / "README.md").write_text("# mine\n")
    before = tree(proj)
    code, output = cli("push", built, "--repo", "x/y", "--dry-run", proj)
    assert code == 1 and "not an mdpo-data export" in one_error(output)
    assert tree(proj) == before
    code, output = cli("push", built, "--repo", "x/y", "--dry-run", built / "export")
    assert code == 1 and "inside the build folder" in one_error(output)
    assert not (built / "export").exists()


def test_1_export_is_replaced_only_when_it_is_exactly_ours_and_gets_umask_modes(built, tmp_path):
    out = tmp_path / "export"
    old = os.umask(0o022)
    try:
        assert cli("push", built, "--repo", "x/y", "--dry-run", out)[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()} == {0o644}
    assert cli("push", built, "--repo", "x/y", "--dry-run", out)[0] == 0  # our export: replaced
    (out / "data" / "notes.txt").write_text("mine")
    code, output = cli("push", built, "--repo", "x/y", "--dry-run", out)
    assert code == 1 and "data/notes.txt" in one_error(output)
    assert (out / "data" / "notes.txt").read_text() == "mine"


def test_2_build_refuses_a_foreign_folder_and_overwrite_removes_only_ours(built, tmp_path):
    foreign = tmp_path / "u"
    foreign.mkdir()
    (foreign / "README.md").write_text("notes\n")
    (foreign / "manifest.json").write_text("keep\n")
    for extra in ([], ["--overwrite"]):
        code, output = cli("build", "--source", "demo", "--n", 4, "--out", foreign, "--quiet", *extra)
        assert code == 1 and "holds no mdpo-data build" in one_error(output)
    assert tree(foreign) == {"README.md": sha256_file(foreign / "README.md"),
                             "manifest.json": sha256_file(foreign / "manifest.json")}
    assert (foreign / "manifest.json").read_text() == "keep\n"

    ours = copy_build(built, tmp_path / "ours")
    (ours / "labels.csv").write_text("user file\n")
    (ours / "train-00007-of-00009.arrow").write_bytes(b"not listed by our manifest")
    code, output = cli("build", "--source", "demo", "--n", 4, "--rejected", "moco", "--out", ours,
                       "--quiet", "--overwrite")
    assert code == 0, output
    assert (ours / "labels.csv").read_text() == "user file\n"
    assert (ours / "train-00007-of-00009.arrow").read_bytes() == b"not listed by our manifest"
    assert manifest_json(ours)["rejected_image"]["spec"] == "moco"
    assert not (ours / "train-00001-of-00002.arrow").exists()  # the old build's second shard


def test_3_paths_from_a_manifest_must_stay_inside_the_folder(built, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    write_shard(victim / "x.arrow", [read_shard(built / "train-00000-of-00002.arrow")])
    before = tree(victim)
    directory = copy_build(built, tmp_path / "b")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["splits"]["train"][0]["file"] = "../victim/x.arrow"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    code, output = cli("score", directory, "--ref-model", "tiny", "--quiet")
    assert code == 1 and "splits.train[0].file '../victim/x.arrow'" in one_error(output)
    assert tree(victim) == before
    code, output = cli("validate", directory)
    assert code == 1 and "splits.train[0].file" in output


# ------------------------------------------------------------------ 4: resume keys include the source


def _pairs_build(source: Path, out: Path, **extra):
    config = BuildConfig(source="pairs", source_path=str(source), n=6, shard_size=2, seed=1, **extra)
    return run_build(config, out, progress=False)


def _chosen_texts(out: Path) -> dict[str, str]:
    return {r["example_id"]: schema.text_of(r["chosen"])
            for f in sorted(out.glob("train-*.arrow")) for r in read_shard(f).to_pylist()}


def test_4_an_edited_source_remakes_the_shards_it_touches(tmp_path):
    built = make_trl_pairs(tmp_path / "src", rows=10, fmt="jsonl")
    out = tmp_path / "out"
    first = _pairs_build(built.data, out)
    assert first.shards_written == 3
    assert _pairs_build(built.data, out).shards_reused == 3  # unchanged source: reused
    lines = built.data.read_text().splitlines()
    edited = [json.loads(line) for line in lines]
    for row in edited:
        row["chosen"][0]["content"][0]["text"] += " (edited)"
    built.data.write_text("".join(json.dumps(r) + "\n" for r in edited))
    again = _pairs_build(built.data, out)
    assert again.shards_written == 3 and again.shards_reused == 0
    assert all(text.endswith("(edited)") for text in _chosen_texts(out).values())
    assert cli("validate", out)[0] == 0


def test_4_killed_build_then_changed_source_never_duplicates_an_example(tmp_path):
    built = make_trl_pairs(tmp_path / "src", rows=12, fmt="jsonl")
    out = tmp_path / "out"

    def die(name):
        raise KeyboardInterrupt(name)

    config = BuildConfig(source="pairs", source_path=str(built.data), n=6, shard_size=2, seed=1)
    with pytest.raises(KeyboardInterrupt):
        run_build(config, out, progress=False, after_shard=die)
    lines = built.data.read_text().splitlines()
    first = json.loads(lines[0])
    first["chosen"][0]["content"][0]["text"] = "A new first answer."
    built.data.write_text(json.dumps(first) + "\n" + "\n".join(lines) + "\n")  # prepend a row
    result = run_build(config, out, progress=False)
    ids = [eid for f in sorted(out.glob("train-*.arrow")) for eid in read_shard(f).column("example_id").to_pylist()]
    assert len(ids) == len(set(ids)) == result.manifest.counts.written
    code, output = cli("validate", out)
    assert code == 0, output


def test_4_validate_reports_duplicated_and_stale_examples(built, tmp_path):
    directory = copy_build(built, tmp_path / "b")
    second = directory / "train-00001-of-00002.arrow"
    write_shard(second, [read_shard(directory / "train-00000-of-00002.arrow")])  # same rows twice
    manifest = manifest_json(directory)
    manifest["splits"]["train"][1]["sha256"] = sha256_file(second)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    marker = directory / ".state" / "train-00000-of-00002.arrow.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "key": "0" * 16}))
    code, output = cli("validate", directory)
    assert code == 1
    assert "example_id also used by train-00000-of-00002.arrow row 0" in output
    assert "train-00000-of-00002.arrow: made by another build config" in output


# ------------------------------------------------------------------ 5: score never blesses edited bytes


def test_5_score_refuses_a_shard_changed_after_the_build(built, tmp_path):
    directory = copy_build(built, tmp_path / "b")
    shard = directory / "train-00001-of-00002.arrow"
    table = read_shard(shard)
    write_shard(shard, [table.slice(0, 2)])
    before = manifest_json(directory)
    code, output = cli("score", directory, "--ref-model", "tiny", "--quiet")
    assert code == 1 and "train-00001-of-00002.arrow: sha256" in one_error(output) and "does not match manifest.json" in one_error(output)
    assert manifest_json(directory) == before
    assert cli("validate", directory)[0] == 1


# ------------------------------------------------------------------ 7: preview is linear


def test_7_preview_wrap_is_bounded_by_what_fits_not_by_the_text(monkeypatch):
    from PIL import ImageFont

    from mdpo_data.report import preview

    font = ImageFont.load_default(size=preview.FONT_SIZE)
    measured = []
    real = type(font).getlength

    def counting(self, text, *args, **kwargs):
        measured.append(len(text))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(type(font), "getlength", counting)
    work = {}
    for n in (2_000, 200_000):
        measured.clear()
        lines = preview.wrap("x" * n, font, preview.TEXT_WIDTH, 3)
        work[n] = sum(measured)
        assert len(lines) == 3 and lines[-1].endswith("…")
    assert work[200_000] == work[2_000]  # characters measured do not grow with the text


def test_7_preview_of_long_answers(tmp_path):
    from card_fixtures import write_build

    def long_text(split, rows):
        for row in rows:
            row["chosen"] = schema.response_messages("w" * 100_000 + " end")
        return rows

    directory = write_build(tmp_path / "b", n_train=4, n_eval=0, edit=long_text)
    start = time.perf_counter()
    code, output = cli("preview", directory, "--n", 4)
    assert code == 0, output
    html = (directory / "preview.html").read_text()
    assert "w" * 100_000 not in html and "…" in html
    assert time.perf_counter() - start < 60  # generous: minutes before the fix


# ------------------------------------------------------------------ 8: one writer per folder


@pytest.mark.slow
def test_8_a_second_writer_is_refused_naming_the_pid(built, tmp_path):
    directory = copy_build(built, tmp_path / "b")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom mdpo_data.format.folder import hold\n"
         f"with hold({str(directory)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree(directory)
        proc = subprocess.run([*CLI, "build", "--source", "demo", "--n", "6", "--shard-size", "3",
                               "--out", str(directory), "--quiet"], capture_output=True, text=True)
        assert proc.returncode == 1
        assert f"{directory} is in use by pid {holder.pid}" in one_error(proc.stderr)
        code, output = cli("score", directory, "--ref-model", "tiny", "--quiet")
        assert code == 1 and f"in use by pid {holder.pid}" in output
        assert tree(directory) == before
    finally:
        holder.kill()
        holder.wait()
    assert cli("build", "--source", "demo", "--n", 6, "--shard-size", 3, "--out", directory, "--quiet")[0] == 0


# ------------------------------------------------------------------ 9: one-line errors, nothing created


@pytest.mark.parametrize("args, expected", [
    (["--out", "{tmp}/afile/sub"], "afile is a file"),
    (["--out", "/proc/mdpo-x"], "cannot create it"),
    (["--out", "{tmp}/n", "--ref-model", "tiny", "--device", "bogus"], "'bogus' is not a device"),
    (["--out", "{tmp}/n", "--ref-model", "tiny", "--device", "cuda:7"], "cuda:7"),
    (["--out", "{tmp}/n", "--rejected-response", "bogus"], "unknown strategy 'bogus'"),
    (["--out", "{tmp}/n", "--rejected-response", "weaken:abc"], "whole diffusion step"),
    (["--out", "{tmp}/n", "--workers", "-2"], "--workers: must be at least 1, got -2"),
    (["--out", "{tmp}/n", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["--out", "{tmp}/n", "--pipeline", "{tmp}/workers.yaml"], "--workers: expected a whole number"),
    (["--pipeline", "{tmp}/out.yaml"], "--out: expected a string"),
    (["--out", "{tmp}/n", "--pipeline", "{tmp}/dtype.yaml"], "'float64' is not one of"),
    (["--out", "{tmp}/n", "--pipeline", "{tmp}/latin1.yaml"], "is not UTF-8 text"),
])
def test_9_bad_options_are_one_line_errors_before_anything_is_created(tmp_path, args, expected):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "workers.yaml").write_text('workers: "abc"\n')
    (tmp_path / "out.yaml").write_text("out: [1, 2]\n")
    (tmp_path / "dtype.yaml").write_text("dtype: float64\n")
    (tmp_path / "latin1.yaml").write_bytes("description: caf\xe9\n".encode("latin-1"))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, output = cli("build", "--source", "demo", "--n", 4, "--quiet",
                       *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code != 0 and expected in one_error(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not Path("/proc/mdpo-x").exists()


def test_9_other_commands_refuse_bad_values_and_damaged_state(built, tmp_path):
    code, output = cli("preview", built, "--n", 0)
    assert code == 2 and "0 is not in the range x>=1" in one_error(output)
    code, output = cli("score", built, "--ref-model", "tiny", "--max-length", 0)
    assert code == 2 and "--max-length" in one_error(output)
    directory = copy_build(built, tmp_path / "b")
    (directory / ".state" / "train-00000-of-00002.arrow.json").write_bytes(b"{torn")
    code, output = cli("build", "--source", "demo", "--n", 6, "--shard-size", 3, "--out", directory, "--quiet")
    assert code == 0 and "1 written, 1 reused" in output  # a torn marker: that shard is re-made
    (directory / ".state" / "build.json").write_bytes(b"\xff")
    code, output = cli("build", "--source", "demo", "--n", 6, "--shard-size", 3, "--out", directory, "--quiet")
    assert code == 1 and "--overwrite" in one_error(output)


@pytest.mark.slow
def test_9_offline_push_is_one_line(built, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_fake"}
    proc = subprocess.run([*CLI, "push", str(built), "--repo", "x/y", "--allow-smoke-test"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "x/y" in one_error(proc.stderr)


# ------------------------------------------------------------------ 11: silkie counts rows and pairs apart


def test_11_silkie_counts_file_rows_and_pairs_separately(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path / "src", rows=19, seed=2)
    for pairing in ("best-worst", "all"):
        out = tmp_path / pairing
        code, output = cli("build", "--source", "silkie", "--source-path", built.root,
                           "--pairing", pairing, "--n", 5, "--out", out, "--quiet")
        assert code == 0, output
        counts = manifest_json(out)["counts"]
        assert counts["read"] == 19
        assert counts["pairs"] >= counts["candidates"]
        shown = {line.rsplit(None, 1)[0].strip(): line.split()[-1] for line in output.splitlines()
                 if line.startswith("  ")}
        assert shown["source rows read"] == "19" and shown["pairs formed"] == str(counts["pairs"])
        assert f"Source file rows read: 19; pairs formed: {counts['pairs']};" in (out / "README.md").read_text()
    assert manifest_json(tmp_path / "all")["counts"]["pairs"] > 19


# ------------------------------------------------------------------ 12: modes, paths, empty builds


def test_12_files_get_umask_modes_and_no_absolute_paths_are_published(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path / "src", rows=12, seed=4, bad=["missing_image"])
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        code, output = cli("build", "--source", "silkie", "--source-path", built.root.resolve(),
                           "--n", 5, "--out", out, "--quiet")
    finally:
        os.umask(old)
    assert code == 0, output
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o644}, modes
    for name in ("manifest.json", "README.md"):
        text = (out / name).read_text()
        assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text, name


def test_12_a_build_with_no_train_rows_exits_nonzero_and_does_not_validate(tmp_path):
    code, output = cli("build", "--source", "demo", "--n", 4, "--max-pixels", 1, "--out", tmp_path / "o", "--quiet")
    assert code == 1 and "wrote 0 train rows" in one_error(output)
    code, output = cli("validate", tmp_path / "o")
    assert code == 1 and "split train has 0 rows" in output


# ------------------------------------------------------------------ 6: a mistyped manifest is one error in every reader


@pytest.mark.parametrize("field, value, named", [
    ("reference", "yes", "field reference"),
    ("config", None, "field config"),
    ("counts", [], "field counts"),
    ("config.max_pixels", "big", "field config.max_pixels"),
    ("counts.skipped", {"image_corrupt": "many"}, "field counts.skipped.image_corrupt"),
])
def test_6_a_mistyped_manifest_is_one_error_naming_the_field(built, tmp_path, field, value, named):
    directory = copy_build(built, tmp_path / "b")
    manifest = json.loads((directory / "manifest.json").read_text())
    *parents, last = field.split(".")
    target = manifest
    for key in parents:
        target = target[key]
    target[last] = value
    (directory / "manifest.json").write_text(json.dumps(manifest))
    for command in (["inspect"], ["card"], ["preview"], ["score", "--ref-model", "tiny"]):
        code, output = cli(*command, directory)
        assert code == 1 and named in one_error(output), (command, output)
    code, output = cli("validate", directory)
    assert code == 1 and named in output
