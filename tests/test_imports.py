"""The package's import graph stays readable: no module imports another's private names, and
no import cycles, counting imports inside functions (they hide cycles rather than remove them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mdpo_data", "mdpo_train")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]):
    """(imported module, imported names, line) for every project import, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            if base.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in known:  # `from package import module`
                    yield f"{base}.{alias.name}", [], node.lineno
                else:
                    yield base, [alias.name], node.lineno


def _graph():
    modules = _modules()
    known = set(modules)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for name, path in modules.items():
        for target, names, line in _imports(name, path, known):
            if target in known and target != name:
                edges[name].add(target)
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__"):
                    private.append(f"{path.relative_to(ROOT)}:{line} imports {target}.{imported}")
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_another_modules_private_names():
    _, private = _graph()
    assert not private, "\n".join(private)


def test_no_import_cycles_even_through_function_level_imports():
    edges, _ = _graph()
    cycles = _cycles({name: {t for t in targets if not name.startswith(t + ".")} for name, targets in edges.items()})
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_mdpo_train_depends_on_mdpo_data_never_the_reverse():
    edges, _ = _graph()
    wrong = sorted(f"{m} -> {t}" for m, targets in edges.items() if m.startswith("mdpo_data")
                   for t in targets if t.startswith("mdpo_train"))
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("case", ["cycle", "private"])
def test_the_scan_catches_what_it_looks_for(case):
    """The checks above could pass by finding nothing: make sure they see a planted case."""
    if case == "cycle":
        assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    else:
        edges, _ = _graph()
        assert edges["mdpo_data.cli"], "the CLI imports project modules"
