"""`--rejected albumentations:FILE`: a user's pipeline (A.save format), seeded per example,
recorded in the manifest; built-in strategies stay free of albumentations and torch."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from cli_helpers import folder_bytes, run_cli

from mdpo_data.config.build import BuildConfig
from mdpo_data.rejected.pipeline import Albumentations
from mdpo_data.rejected.registry import SpecError, parse_spec
from cli_helpers import manifest_json
from mdpo_data.format.schema import image_bytes
from mdpo_data.format.shards import read_shard, shard_files

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
A = pytest.importorskip("albumentations")


def save_pipeline(path, data_format="yaml"):
    pipeline = A.Compose([
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.4, contrast_limit=0.4, p=1.0),
        A.GaussNoise(std_range=(0.1, 0.3), p=1.0),
    ])
    A.save(pipeline, str(path), data_format=data_format)
    return path


def photo(seed=0, size=(48, 40)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("suffix,data_format", [(".yaml", "yaml"), (".json", "json")])
def test_pipeline_is_seeded_per_example(tmp_path, suffix, data_format):
    path = save_pipeline(tmp_path / f"p{suffix}", data_format)
    strategy = parse_spec(f"albumentations:{path}")
    assert isinstance(strategy, Albumentations)
    assert strategy.resolved == f"albumentations:{strategy.sha256[:16]}"
    image = photo()
    first, again, other = (np.asarray(strategy.apply(image, s)) for s in (11, 11, 12))
    assert first.shape == np.asarray(image).shape
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert not np.array_equal(first, np.asarray(image))


def test_bad_pipeline_files_are_spec_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("transform: {__class_fullname__: NoSuchTransform}\n")
    (tmp_path / "p.txt").write_text("x")
    for spec, problem in [
        (f"albumentations:{tmp_path / 'missing.yaml'}", "cannot read"),
        (f"albumentations:{tmp_path / 'p.txt'}", ".yaml, .yml or .json"),
        (f"albumentations:{tmp_path / 'bad.yaml'}", "not an albumentations pipeline"),
        ("albumentations", "needs a pipeline file"),
    ]:
        with pytest.raises(SpecError, match=problem):
            parse_spec(spec)


@pytest.mark.slow
def test_build_records_the_pipeline_and_is_byte_identical(tmp_path):
    path = save_pipeline(tmp_path / "pipe.yaml")
    args = ["build", "--source", "demo", "--n", 12, "--seed", 5, "--quiet",
            "--rejected", f"albumentations:{path}"]
    run_cli(*args, "--out", tmp_path / "a")
    run_cli(*args, "--workers", 2, "--out", tmp_path / "b")
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    manifest = manifest_json(tmp_path / "a")
    record = manifest["rejected_image"]
    assert record["pipeline"] == path.read_text()
    strategy = parse_spec(f"albumentations:{path}")
    assert record["pipeline_sha256"] == strategy.sha256 and record["resolved"] == strategy.resolved
    rows = read_shard(shard_files(tmp_path / "a", "train")[0]).to_pylist()
    assert {r["rejected_image_strategy"] for r in rows} == {strategy.resolved}
    for row in rows[:3]:  # m_l is the pipeline applied to the chosen image with the row's seed
        chosen = Image.open(io.BytesIO(image_bytes(row["images"]))).convert("RGB")
        rejected = Image.open(io.BytesIO(image_bytes(row["rejected_images"])))
        rejected = np.asarray(rejected.convert("RGB"))
        expected = np.asarray(strategy.apply(chosen, row["seed"]))
        assert rejected.shape == expected.shape
        assert np.abs(rejected.astype(int) - expected.astype(int)).mean() < 8  # JPEG re-encode


def test_build_key_holds_only_the_libraries_used_and_the_pipeline_content(tmp_path):
    assert BuildConfig().libraries() == ("pillow", "numpy")
    assert "torch" in BuildConfig(rejected_response="weaken").libraries()
    path = save_pipeline(tmp_path / "pipe.yaml")
    config = BuildConfig(rejected=f"albumentations:{path}")
    assert "albumentations" in config.libraries() and "torchvision" not in config.libraries()
    key = config.key()
    A.save(A.Compose([A.HorizontalFlip(p=1.0)]), str(path), data_format="yaml")
    assert config.key() != key


def test_builtin_strategies_never_import_albumentations_or_torch():
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from mdpo_data.rejected.registry import parse_spec\n"
        "from mdpo_data.build import worker; from mdpo_data.rejected import augment\n"
        "image = Image.new('RGB', (40, 30), (10, 200, 30))\n"
        "for spec in ('crop', 'moco', 'noise:500', 'swap'):\n"
        "    parse_spec(spec).apply(image, 7)\n"
        "print(sorted(m for m in ('torch', 'albumentations', 'cv2') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_cli_reports_a_bad_pipeline_in_one_line(tmp_path):
    proc = run_cli("build", "--source", "demo", "--rejected", f"albumentations:{tmp_path / 'x.yaml'}",
                   "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot read" in proc.stderr
