"""Issue 21 (9, 13, 14): checkpoints are verified before anything of them is used, through the
real `mdpo-train` command. Every file of a checkpoint is truncated, flipped and deleted in
turn; an edited global step (with or without re-hashed checksums) is refused; each is one
error line and a nonzero exit, never a traceback. `--resume latest` as the README shows it
(no --config) continues the run, also from a moved data folder; a full disk while saving is
one line."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mdpo_data.format.folder import TRAIN_MARK
from mdpo_train.checkpoint import CHECKSUMS_FILE, STATE_FILE, write_checksums
from mdpo_train.cli import main
from mdpo_train.metrics import read_jsonl
from train_fixtures import one_thread, scored_demo

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

FLAGS = ["--global-batch-size", "4", "--per-device-batch-size", "2", "--lora-r", "4", "--lora-alpha", "8",
         "--epochs", "1", "--max-steps", "2", "--save-steps", "1", "--warmup-ratio", "0", "--no-progress"]
CHECKPOINT = Path("checkpoints") / "checkpoint-2"


def invoke(*args) -> tuple[int, str]:
    with one_thread():
        result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def one_error(output: str) -> str:
    """The single problem line of a refused start (a config problem or an `Error:` line)."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith(("Error: ", "  - "))]
    lines = [line for line in lines if line != "Error: invalid training config:"]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return scored_demo(tmp_path_factory.mktemp("data") / "demo", n=12, eval_fraction=0.25)


@pytest.fixture(scope="module")
def finished(demo, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    code, output = invoke("--shards", demo, "--output-dir", run, *FLAGS)
    assert code == 0, output
    return run


def stopped_after_step_1(finished: Path, target: Path) -> Path:
    """A run folder as a kill right after step 1's checkpoint leaves it."""
    (target / "checkpoints").mkdir(parents=True)
    shutil.copy(finished / TRAIN_MARK, target / TRAIN_MARK)  # the run marks its folder first
    shutil.copytree(finished / "checkpoints" / "checkpoint-1", target / "checkpoints" / "checkpoint-1")
    return target


def test_resume_latest_as_the_readme_shows_it_continues_the_run_from_a_moved_data_folder(
        demo, finished, tmp_path):
    run = stopped_after_step_1(finished, tmp_path / "run")
    moved = shutil.copytree(demo, tmp_path / "moved")  # same bytes, another place
    code, output = invoke("--shards", moved, "--output-dir", run, "--resume", "latest")
    assert code == 0, output
    losses = {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"}
    expected = {r["step"]: r["loss"] for r in read_jsonl(finished / "metrics.jsonl") if r["split"] == "train"}
    assert sorted(losses) == [2] and losses[2] == pytest.approx(expected[2], rel=1e-5)
    # a key given again with another value is still refused, by name
    run = stopped_after_step_1(finished, tmp_path / "again")
    code, output = invoke("--shards", demo, "--output-dir", run, "--resume", "latest", "--lr", "0.5")
    assert code == 2 and "config differs from the checkpoint's: lr" in one_error(output)


def test_resume_refuses_other_data(finished, tmp_path):
    other = scored_demo(tmp_path / "other", n=12, eval_fraction=0.25, seed=1)
    run = stopped_after_step_1(finished, tmp_path / "run")
    code, output = invoke("--shards", other, "--output-dir", run, "--resume", "latest")
    assert code == 2 and "the data changed since the checkpoint" in one_error(output)


def damage(folder: Path, name: str, how: str) -> None:
    path = folder / name
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:])
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
def test_every_damaged_checkpoint_file_is_one_line_naming_it(demo, finished, tmp_path, how):
    names = sorted(p.name for p in (finished / CHECKPOINT).iterdir())
    assert {"optimizer.bin", "random_states_0.pkl", "scheduler.bin", STATE_FILE, CHECKSUMS_FILE} <= set(names)
    for name in names:
        run = shutil.copytree(finished, tmp_path / f"{how}-{name}")
        (run / "README.md").unlink()  # the card: a finished run's marker, not checked here
        damage(run / CHECKPOINT, name, how)
        code, output = invoke("--shards", demo, "--output-dir", run, "--resume", "latest")
        line = one_error(output)
        assert code != 0 and name in line, (name, output)
        assert "weights_only" not in output


def test_an_extra_file_or_an_edited_global_step_is_refused(demo, finished, tmp_path):
    run = shutil.copytree(finished, tmp_path / "extra")
    (run / CHECKPOINT / "notes.txt").write_text("mine")
    code, output = invoke("--shards", demo, "--output-dir", run, "--resume", "latest")
    assert code == 2 and "notes.txt: not listed in checksums.json" in one_error(output)

    for step in (1, 5):  # edited, and the checksums recomputed to match: the steps disagree
        run = shutil.copytree(finished, tmp_path / f"step{step}")
        state = run / CHECKPOINT / STATE_FILE
        saved = json.loads(state.read_text())
        saved["position"]["global_step"] = step
        state.write_text(json.dumps(saved))
        code, output = invoke("--shards", demo, "--output-dir", run, "--resume", "latest")
        assert code == 2 and "trainer_state.json: sha256 does not match" in one_error(output)
        (run / CHECKPOINT / CHECKSUMS_FILE).unlink()
        write_checksums(run / CHECKPOINT, step)
        code, output = invoke("--shards", demo, "--output-dir", run, "--resume", "latest")
        assert code == 2 and "the global step disagrees" in one_error(output), output


@pytest.mark.parametrize("edit", [{"step_in_epoch": 1}, {"epoch": 1, "step_in_epoch": 0},
                                  {"step_in_epoch": 40}])
def test_an_edited_data_position_is_refused_even_when_rehashed(demo, finished, tmp_path, edit):
    """The global step, the scheduler and the checksums agree, but (epoch, step in epoch) no
    longer gives the global step: resuming would silently replay or skip examples."""
    run = shutil.copytree(finished, tmp_path / "run")
    state = run / CHECKPOINT / STATE_FILE
    saved = json.loads(state.read_text())
    saved["position"].update(edit)
    state.write_text(json.dumps(saved))
    (run / CHECKPOINT / CHECKSUMS_FILE).unlink()
    write_checksums(run / CHECKPOINT, 2)
    code, output = invoke("--shards", demo, "--output-dir", run, "--resume", "latest")
    assert code != 0 and "the data position" in one_error(output) and STATE_FILE in output, output


def test_the_run_lists_its_weights_for_readers(finished):
    """weights.sha256.json (written last at save) lists the adapter; `mdpo-eval --adapter`
    checks it before loading."""
    from mdpo_data.format.integrity import WEIGHTS_FILE, weights_problems

    listed = json.loads((finished / WEIGHTS_FILE).read_text())["files"]
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(listed)
    assert weights_problems(finished) == []


def test_checkpoint_files_get_the_umask_mode(finished):
    """safetensors writes through a 0600 temp file; a run shared by a team stays readable."""
    expected = 0o666 & ~_umask()
    modes = {p.name: p.stat().st_mode & 0o777 for p in (finished / CHECKPOINT).iterdir()}
    assert modes and set(modes.values()) == {expected}, modes


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_is_one_line(demo, tmp_path):
    """RLIMIT_FSIZE makes every write past 20 kB fail (EFBIG), as a full disk does: the
    optimizer state (160 kB) cannot be written."""

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    run = tmp_path / "run"
    script = "import sys; from mdpo_train.cli import main; sys.exit(main())"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-c", script, "--shards", str(demo), "--output-dir", str(run),
                             *FLAGS], capture_output=True, text=True, preexec_fn=small_files, env=env,
                            timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "cannot write checkpoint" in errors[0], result.stderr
    assert not list((run / "checkpoints").glob("*.tmp")) if (run / "checkpoints").exists() else True


def test_checkpoint_json_nested_too_deep_is_one_line(tmp_path):
    """A checksums.json or trainer_state.json nested deeper than the JSON parser goes is
    damaged, in one line, never a RecursionError traceback."""
    from mdpo_train.checkpoint import read_state, verify_checkpoint

    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    (folder / CHECKSUMS_FILE).write_text("[" * 100_000)
    problems = verify_checkpoint(folder)
    assert len(problems) == 1 and "is damaged" in problems[0]
    (folder / STATE_FILE).write_text("[" * 100_000)
    with pytest.raises(ValueError, match="is damaged"):
        read_state(folder)


def test_a_metrics_line_nested_too_deep_is_dropped_like_a_torn_one(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n' + "[" * 100_000 + "\n")
    assert read_jsonl(log) == [{"step": 1}]
