"""Fuzz: corrupt files never crash `validate`. Random byte flips and truncations of a shard and
random type changes in manifest.json must each give at least one problem line (exit 1 from the
CLI), never a traceback or a signal. Seeded, so a failure reproduces."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys

import pytest
from card_fixtures import write_build

from mdpo_data.report.validate import validate

SHARD = "train-00000-of-00001.arrow"
FLIPS = 300
MANIFEST_CASES = 150

# manifest locations with a declared type, and values of every JSON type to try there
TYPED_PATHS = [
    ("format_version",), ("config",), ("config", "n"), ("config", "seed"), ("config", "max_pixels"),
    ("config", "source"), ("config", "rejected"), ("config", "shard_size"), ("counts",),
    ("counts", "read"), ("counts", "skipped"), ("counts", "skipped", "tie"), ("counts", "written"),
    ("counts", "written_by_split"), ("counts", "written_by_split", "train"), ("splits",),
    ("splits", "train"), ("splits", "train", 0), ("splits", "train", 0, "file"),
    ("splits", "train", 0, "rows"), ("splits", "train", 0, "sha256"), ("reference",),
    ("reference", "scored"), ("reference", "fingerprint"), ("reference", "fingerprint", "model"),
    ("reference", "fingerprint", "max_length"), ("reference", "skipped"),
    ("reference", "skipped", "too_long"), ("reference", "columns"), ("rejected_image",),
    ("rejected_image", "spec"), ("versions",), ("versions", "pyarrow"),
]
VALUES = ["yes", "big", 3.5, -1, 10**30, True, [], [1, 2], {}, {"a": 1}, None, "", "../x.arrow"]


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


NULLABLE = {("counts", "read"), ("counts", "written"), ("reference",), ("rejected_image",),
            ("reference", "fingerprint"), ("reference", "fingerprint", "max_length")}
FORMATTED = {"format_version", "file", "sha256"}  # strings with a required form


def _fits(where, old, new) -> bool:
    """True when `new` is as valid there as `old`: the same JSON type (a free-form string, any
    object or list), or null where the field may be null. Everything else is a type change."""
    if new is None:
        return where in NULLABLE or old is None
    if isinstance(old, bool) or isinstance(new, bool):
        return type(old) is type(new)
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return isinstance(old, float) or isinstance(new, int)
    if isinstance(old, str) and isinstance(new, str):
        return where[-1] not in FORMATTED
    return type(old) is type(new)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_build(tmp_path_factory.mktemp("fuzz") / "b", n_train=4, n_eval=0, shard_size=4)


def test_byte_flips_and_truncations_of_a_shard_are_always_reported(folder):
    path = folder / SHARD
    original = path.read_bytes()
    rng = random.Random(9)
    try:
        for case in range(FLIPS):
            data = bytearray(original)
            if case % 4 == 3:
                data = data[: rng.randrange(len(data))]
            else:
                for _ in range(rng.randint(1, 3)):
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(data))
            problems = validate(folder)
            assert problems and all(isinstance(p, str) for p in problems), case
            assert any(SHARD in p for p in problems), (case, problems)
    finally:
        path.write_bytes(original)
    assert validate(folder) == []


def test_random_type_changes_in_the_manifest_are_always_reported(folder):
    path = folder / "manifest.json"
    original = json.loads(path.read_text())
    rng = random.Random(11)
    tried = 0
    try:
        while tried < MANIFEST_CASES:
            where = rng.choice(TYPED_PATHS)
            value = rng.choice(VALUES)
            manifest = copy.deepcopy(original)
            parent = _get(manifest, where[:-1])
            if _fits(where, parent[where[-1]], value):
                continue
            parent[where[-1]] = value
            path.write_text(json.dumps(manifest))
            problems = validate(folder)
            assert problems, (where, value)
            tried += 1
    finally:
        path.write_text(json.dumps(original))
    assert validate(folder) == []


@pytest.mark.slow
def test_the_cli_exits_1_with_a_message_never_a_traceback_or_signal(folder, tmp_path):
    import shutil

    rng = random.Random(5)
    for case in range(4):
        directory = shutil.copytree(folder, tmp_path / f"c{case}")
        if case < 2:
            data = bytearray((directory / SHARD).read_bytes())
            for _ in range(20):
                data[rng.randrange(len(data))] ^= 0xFF
            (directory / SHARD).write_bytes(bytes(data[: len(data) - case * 100]))
        else:
            manifest = json.loads((directory / "manifest.json").read_text())
            manifest["config"]["max_pixels"] = "big" if case == 2 else manifest["config"]["max_pixels"]
            manifest["counts"]["skipped"] = {"tie": "many"} if case == 3 else manifest["counts"]["skipped"]
            (directory / "manifest.json").write_text(json.dumps(manifest))
        proc = subprocess.run([sys.executable, "-m", "mdpo_data.cli", "validate", str(directory)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, (case, proc.returncode, proc.stderr)
        assert "problem(s)" in proc.stderr and "Traceback" not in proc.stderr
