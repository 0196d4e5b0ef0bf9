"""The package's layering, as docs/architecture.md draws it: no package
imports another in a cycle (imports inside functions count), no private
name crosses a package, and files and functions stay readable."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "weightspace"
MAX_FILE_LINES = 700
MAX_FUNCTION_LINES = 100  # lines of code, the docstring not counted


def _unit(path: Path) -> str:
    """The top-level package or module of ``weightspace`` a file belongs to."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[0]


def _target_unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "weightspace" or len(parts) < 2:
        return None
    return parts[1]


def _sources():
    for path in sorted(ROOT.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.AST):
    """``(module, names)`` of every import in the file, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path, tree in _sources():
        here = _unit(path)
        for module, _ in _imports(tree):
            there = _target_unit(module)
            if there is not None and there != here and there != "__main__":
                edges[here].add(there)
    return edges


def _cycle_through(edges: dict[str, set[str]], start: str) -> list[str] | None:
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_package_imports_another_in_a_cycle():
    edges = _graph()
    cycles = {" -> ".join(c) for u in edges if (c := _cycle_through(edges, u))}
    assert not cycles, f"package import cycles: {sorted(cycles)}"


def test_no_private_name_crosses_a_package():
    crossings = []
    for path, tree in _sources():
        here = _unit(path)
        for module, names in _imports(tree):
            there = _target_unit(module)
            if there is None or there == here:
                continue
            private_module = any(part.startswith("_") and not part.startswith("__")
                                 for part in module.split("."))
            private_names = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private_module or private_names:
                crossings.append(f"{path.relative_to(ROOT.parent)}: {module} {private_names}")
    assert not crossings, "private names imported across packages:\n" + "\n".join(crossings)


def test_the_layers_point_one_way():
    """The dependencies docs/architecture.md promises, one edge each."""
    edges = _graph()
    forbidden = {
        "spec": {"graph", "nn", "align", "merge", "prune", "train", "zoo", "jobs", "cli",
                 "activations", "io", "models"},
        "activations": {"align", "merge", "prune", "nn", "train", "zoo", "jobs", "cli"},
        "align": {"merge", "prune", "train", "zoo", "jobs", "cli"},
        "merge": {"prune", "train", "zoo", "jobs", "cli"},
        "graph": {"nn", "align", "merge", "prune", "train", "zoo", "jobs", "cli"},
        "nn": {"align", "merge", "prune", "train", "zoo", "jobs", "cli"},
        "jobs": {"cli"},
    }
    wrong = sorted(f"{a} -> {b}" for a, bs in forbidden.items() for b in edges.get(a, set()) & bs)
    assert not wrong, f"dependencies against the layering: {wrong}"


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_stay_readable(path: Path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_FILE_LINES, f"{path.name} has {lines} lines (at most {MAX_FILE_LINES})"
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # the code of the function: its docstring (Args, Shapes, an
            # example) is documentation, not length to split
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            start = body[0].lineno if body else node.lineno
            length = node.end_lineno - start + 1
            if length > MAX_FUNCTION_LINES:
                long.append(f"{node.name} ({length} lines)")
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_listed_subpackage_loads_lazily():
    import weightspace

    for name in weightspace.SUBMODULES:
        assert getattr(weightspace, name).__name__ == f"weightspace.{name}"
