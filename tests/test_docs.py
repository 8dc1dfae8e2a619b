"""The docs stay honest: a short README, links that resolve, no citations of files the
project does not ship, commands and flags that the real CLIs have, and a CI script that runs
exactly the README's set-up commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

import mdpo_data.cli
import mdpo_data.report.eval_cli
import mdpo_train.cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
# Built from parts so that this file does not cite them itself.
FORBIDDEN = ("../" + "shared", "/work/" + "shared", "METHOD" + ".md")
SCANNED = ("README.md", "pyproject.toml", ".ci", "docs", "mdpo_data", "mdpo_train", "data_cards",
           "pipelines", "benchmarks", "tests")
TEXT_SUFFIXES = {".py", ".md", ".j2", ".yaml", ".yml", ".toml", ".txt", ".json", ".jinja", ""}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, all but letters, digits, _ and - dropped,
    spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    body = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", body, re.M)}


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8")))


def test_readme_is_at_most_150_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"


def link_problems(page: Path, root: Path = ROOT) -> list[str]:
    """Relative links of `page` that name no file under `root`, or no heading in it."""
    problems = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.is_file() or root not in file.parents:
            problems.append(f"{target}: no such file in the repository")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            problems.append(f"{target}: {file.name} has no heading #{fragment}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    problems = link_problems(page)
    assert not problems, f"{rel(page)}: " + "; ".join(problems)


def test_the_link_checker_catches_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Speed and memory (`benchmarks/bench_train.py`)\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md#speed-and-memory-benchmarksbench_trainpy) [web](https://x.org/y)\n"
                    "[gone](docs/b.md) [heading](docs/a.md#speed) ![img](docs/a.png) [out](../README.md)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    problems = link_problems(page, root=tmp_path)
    assert [p.split(":")[0] for p in problems] == ["docs/b.md", "docs/a.md#speed", "docs/a.png",
                                                    "../README.md"], problems
    assert slug("BPO: rejected answers for gold-answer data") == "bpo-rejected-answers-for-gold-answer-data"


def test_nothing_cites_files_the_project_does_not_ship():
    found = []
    for top in SCANNED:
        base = ROOT / top
        for file in [base] if base.is_file() else sorted(base.rglob("*")):
            if not file.is_file() or file.suffix not in TEXT_SUFFIXES or "__pycache__" in file.parts:
                continue
            text = file.read_text(encoding="utf-8", errors="replace")
            found += [f"{rel(file)}: {word}" for word in FORBIDDEN if word in text]
    assert not found, "cites a file outside the project: " + ", ".join(found)


# ---------------------------------------------------------------- commands named in the docs
def cli_options(command: click.Command) -> set[str]:
    """Every option string `--help` lists for `command` (both halves of --x/--no-x)."""
    ctx = click.Context(command)
    return {opt for param in command.get_params(ctx) if isinstance(param, click.Option)
            for opt in (*param.opts, *param.secondary_opts)}


DATA = mdpo_data.cli.main
TRAIN = mdpo_train.cli.main
SUBCOMMANDS = {name: DATA.get_command(click.Context(DATA), name)
               for name in DATA.list_commands(click.Context(DATA))}
EVAL = mdpo_data.report.eval_cli.main
EVAL_COMMANDS = {name: EVAL.get_command(click.Context(EVAL), name)
                 for name in EVAL.list_commands(click.Context(EVAL))}


def code_in(page: Path) -> list[str]:
    """Shell text a reader may copy: fenced blocks (continuations joined) and inline spans."""
    text = page.read_text(encoding="utf-8")
    blocks = [b.replace("\\\n", " ") for b in FENCE.findall(text)]
    lines = [line for block in blocks for line in block.splitlines()]
    return lines + SPAN.findall(FENCE.sub("", text))


def invocations(code: str) -> list[tuple[str, list[str]]]:
    """(program, words after it) for each mdpo-data / mdpo-train / mdpo-eval call in a line of shell."""
    code = code.split(" #")[0]
    try:
        words = shlex.split(code, comments=True)
    except ValueError:
        words = code.split()
    found, current = [], None
    for i, word in enumerate(words):
        name = word.rsplit("/", 1)[-1]
        module = words[i - 1] == "-m" if i else False
        programs = {"mdpo-data": "mdpo-data", "mdpo-train": "mdpo-train", "mdpo-eval": "mdpo-eval",
                    "mdpo_data.cli": "mdpo-data", "mdpo_train.cli": "mdpo-train",
                    "mdpo_data.report.eval_cli": "mdpo-eval"}
        if (name in programs and "-" in name) or (module and word in programs):
            current = (programs[name if "-" in name else word], [])
            found.append(current)
        elif word in ("&&", "||", "|", ";"):
            current = None
        elif current is not None:
            current[1].append(word)
    return found


def problems_in(page: Path) -> list[str]:
    problems = []
    for code in code_in(page):
        for program, words in invocations(code):
            if program in ("mdpo-data", "mdpo-eval"):
                if not words or words[0] in ("-h", "--help", "--version"):
                    continue
                commands = SUBCOMMANDS if program == "mdpo-data" else EVAL_COMMANDS
                command = commands.get(words[0])
                if command is None:
                    problems.append(f"`{program} {words[0]}`: no such command (has {sorted(commands)})")
                    continue
                known, flags, label = cli_options(command), words[1:], f"{program} {words[0]}"
            else:
                known, flags, label = cli_options(TRAIN), words, "mdpo-train"
            problems += [f"`{label} {flag}`: not in `{label} --help`"
                         for flag in (w.split("=")[0] for w in flags if w.startswith("--"))
                         if flag not in known]
    return problems


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_commands_and_flags_exist_in_the_cli(page):
    problems = problems_in(page)
    assert not problems, f"{rel(page)}: " + "; ".join(problems)


def test_every_command_is_in_the_readme_table():
    readme = README.read_text(encoding="utf-8")
    missing = [name for name in SUBCOMMANDS if f"| `mdpo-data {name}` |" not in readme]
    missing += [f"mdpo-eval {name}" for name in EVAL_COMMANDS
                if name != "demo-pope" and f"| `mdpo-eval {name}` |" not in readme]
    assert not missing and "| `mdpo-train` |" in readme, f"README's command table lacks {missing}"


def test_the_command_checker_catches_a_wrong_flag(tmp_path):
    page = tmp_path / "bad.md"
    page.write_text("```bash\nmdpo-data build --source demo --no-such-flag 1 \\\n    --out x\n"
                    "mdpo-data frobnicate out/x\n```\nand `mdpo-train --lr 1 --lrr 2`\n")
    problems = problems_in(page)
    assert len(problems) == 3, problems
    assert "--no-such-flag" in problems[0] and "frobnicate" in problems[1] and "--lrr" in problems[2]


# ---------------------------------------------------------------- CI runs the README's commands
def setup_commands(text: str) -> list[str]:
    """The README's set-up commands as CI must run them: continuations joined, spaces squeezed."""
    fenced = "\n".join(FENCE.findall(text))
    joined = re.sub(r"\\\n\s*", " ", fenced)
    return [" ".join(line.split()) for line in joined.splitlines()
            if line.strip().startswith(("python3 -m venv", ".venv/bin/python -m pytest -q"))]


def test_ci_runs_exactly_the_readme_setup_commands():
    readme = setup_commands(README.read_text(encoding="utf-8"))
    assert len(readme) == 3, readme  # install + demo, the full tests, the fast tests
    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci = [" ".join(line.split()) for line in re.sub(r"\\\n\s*", " ", ci_script).splitlines()]
    assert readme[0] in ci, "the README's install + demo command is not .ci/run's"
    assert readme[1] == ".venv/bin/python -m pytest -q" and readme[1] in ci
    assert readme[2] == '.venv/bin/python -m pytest -q -m "not slow"'  # the documented fast run


# Flags of other programs that the docs show (accelerate launch, torchrun, pip, pytest).
FOREIGN_FLAGS = {"--multi_gpu", "--num_processes", "--config_file", "--nproc_per_node", "--help",
                 "--durations"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")


def test_every_flag_named_in_the_docs_exists():
    """Flags named in prose (`--no-image-logps`) belong to some mdpo command or benchmark;
    a `python benchmarks/X.py --flag` line names a flag of that script."""
    ours = cli_options(TRAIN).union(*(cli_options(c) for c in [*SUBCOMMANDS.values(), *EVAL_COMMANDS.values()]))
    scripts = {p.name: set(FLAG.findall(p.read_text(encoding="utf-8")))
               for p in (ROOT / "benchmarks").glob("*.py")}
    known = ours | FOREIGN_FLAGS | set().union(*scripts.values())
    problems = []
    for page in PAGES:
        for code in code_in(page):
            bench = re.search(r"benchmarks/(\w+\.py)", code)
            for flag in FLAG.findall(code.split(" #")[0]):
                if bench and bench.group(1) in scripts and flag not in scripts[bench.group(1)]:
                    problems.append(f"{rel(page)}: {flag} is not an option of {bench.group(1)}")
                elif flag not in known:
                    problems.append(f"{rel(page)}: {flag} is no option of mdpo-data, mdpo-train "
                                    "or a benchmark")
    assert not problems, "; ".join(sorted(set(problems)))


PATH_SPAN = re.compile(r"^((?:mdpo_data|mdpo_train|tests|benchmarks|pipelines|data_cards|docs)/[\w./-]*)"
                       r"(?:::(\w+))?$")


def test_every_repository_path_named_in_the_docs_exists():
    """`mdpo_data/format/markers.py`, `tests/x.py::test_y`: moved or renamed code shows here."""
    problems = []
    for page in PAGES:
        for span in SPAN.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
            match = PATH_SPAN.match(span.strip())
            if not match:
                continue
            path, test = match.groups()
            target = ROOT / path.rstrip("/")
            if not target.exists():
                problems.append(f"{rel(page)}: {path} does not exist")
            elif test and f"def {test}(" not in target.read_text(encoding="utf-8"):
                problems.append(f"{rel(page)}: {path} has no {test}")
    assert not problems, "; ".join(problems)
