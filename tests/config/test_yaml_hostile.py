"""Hostile YAML configs through both real CLIs (`mdpo-data build --pipeline`, `mdpo-train
--config`): an alias bomb, a recursive alias, a key given twice, deep nesting and a huge number
are each one line naming the file (and the line where there is one), exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mdpo_data.config import options as config_io


def bomb(levels: int = 9, width: int = 9, key: str = "n") -> str:
    """A "billion laughs": width**levels strings from a few hundred bytes, in typed key `key`."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for i in range(1, levels):
        name = f"l{i}"
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * width) + "]")
        previous = name
    return "\n".join(lines) + f"\n{key}: *{previous}\n"


CASES = {
    "bomb": (bomb(), "YAML aliases expand to more than 100,000 values"),
    "recursive": ("source: demo\nn: &x [*x]\n", "line 2: recursive YAML alias"),
    "duplicate": ("source: demo\nn: 4\ndemo-size: 20\nn: 5\n",
                  "line 4: duplicate key 'n' (first given on line 2)"),
    "duplicate_spelling": ("source: demo\ndemo-size: 20\ndemo_size: 5\n",
                           "line 3: duplicate key 'demo_size' (first given on line 2)"),
    "nested_duplicate": ("source: pairs\ncolumns:\n  chosen: a\n  chosen: b\n",
                         "line 4: duplicate key 'chosen'"),
    "deep": ("n: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    "huge_int": ("n: " + "9" * 5000 + "\n", "a value cannot be read"),
}
TRAIN_CASES = {
    "bomb": (bomb(key="learning_rate"), "YAML aliases expand"),
    "duplicate": ("shards: d\noutput-dir: r\nepochs: 1\nepochs: 2\n",
                  "line 4: duplicate key 'epochs' (first given on line 3)"),
}


def _run(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    return proc


def _one_error(proc) -> str:
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


@pytest.mark.parametrize("case", list(CASES))
def test_build_pipeline_yaml_is_refused_in_one_line(tmp_path, case):
    text, expected = CASES[case]
    (tmp_path / "p.yaml").write_text(text)
    proc = _run(["mdpo_data.cli", "build", "--pipeline", "p.yaml", "--out", "o", "--quiet"], tmp_path)
    line = _one_error(proc)
    assert "p.yaml" in line and expected in line and len(line) < 400
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_config_yaml_is_refused_in_one_line(tmp_path, case):
    text, expected = TRAIN_CASES[case]
    (tmp_path / "t.yaml").write_text(text)
    proc = _run(["mdpo_train.cli", "--config", "t.yaml"], tmp_path)
    output = proc.stdout + proc.stderr  # mdpo-train lists every config problem, one per line
    assert proc.returncode == 2 and "Traceback" not in output and len(output) < 2000, output
    assert any("t.yaml" in line and expected in line for line in output.splitlines()), output


def test_an_alias_bomb_under_the_limit_is_shown_short():
    """9**4 values pass the expansion limit; the type error still shows only a short repr."""
    data = config_io.load_yaml_text(bomb(levels=4), "p.yaml")
    from mdpo_data.config.build import BuildConfig

    _, problems = config_io.check_fields(BuildConfig, {"n": data["n"]})
    assert len(problems) == 1 and problems[0].startswith("--n: expected a whole number") \
        and len(problems[0]) < 200


def test_ordinary_yaml_with_a_merge_key_and_small_aliases_still_loads():
    text = "base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\nlist: [*b, *b]\n"
    assert config_io.load_yaml_text(text, "c.yaml") == {
        "base": {"x": 1}, "other": {"x": 1, "y": 2}, "list": [{"x": 1}, {"x": 1}]}
