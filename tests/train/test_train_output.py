"""The run folder through the real `mdpo-train` CLI on the tiny model: marked ours first, its
adapter files readable by whom the umask allows, a finished run not written over, a resumed
run accepted, and the data folder left exactly as it was."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from click.testing import CliRunner
from train_fixtures import one_thread, scored_demo

from mdpo_data.format.folder import TRAIN_MARK
from mdpo_train.cli import main as mdpo_train

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

FLAGS = ["--global-batch-size", "4", "--per-device-batch-size", "2", "--lora-r", "4", "--lora-alpha", "8",
         "--no-progress", "--save-steps", "1", "--seed", "3"]


def digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train(data, out, *extra):
    with one_thread():
        return CliRunner().invoke(mdpo_train, ["--shards", str(data), "--output-dir", str(out), *FLAGS, *extra])


def test_run_folder_is_marked_shared_and_never_written_over(tmp_path):
    data = scored_demo(tmp_path / "data", n=16, eval_fraction=0.0)
    before = digest(data)
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        result = train(data, out, "--max-steps", "1")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert (out / TRAIN_MARK).is_file()
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "train_config.yaml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    card = (out / "README.md").read_bytes()
    result = train(data, out, "--max-steps", "1")  # a finished run: refused, nothing replaced
    assert result.exit_code != 0 and "already holds" in result.output
    assert (out / "README.md").read_bytes() == card
    result = train(data, out, "--max-steps", "2", "--resume", "latest")  # ours: may continue
    assert "not empty" not in result.output and "symlink" not in result.output
    assert digest(data) == before


def test_the_same_run_writes_the_same_adapter_whatever_the_hash_seed(tmp_path):
    """peft writes its config's sets (target_modules) in hash order, which changes with every
    process; the run sorts them, so two processes give byte-identical adapter files."""
    import subprocess
    import sys

    data = scored_demo(tmp_path / "data", n=8, eval_fraction=0.0)
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([sys.executable, "-m", "mdpo_train.cli", "--shards", str(data), "--output-dir",
                               str(out), *FLAGS, "--max-steps", "1"], capture_output=True, text=True, env=env,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr
        outputs.append(out)
    for name in ("adapter_config.json", "adapter_model.safetensors", "weights.sha256.json"):
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
