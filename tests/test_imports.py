"""The package's modules import each other without a cycle, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import resnet5m

PACKAGE = Path(resnet5m.__file__).parent


def module_name(path: Path) -> str:
    """A source file's module name inside the package: "model", "weights.read"; a subpackage's __init__ is "weights"."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imported(node: ast.AST, package: list[str], files: dict[str, Path]) -> list[list[str]]:
    """The package modules an import statement names, as name parts ([] for the package's own __init__)."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[1:] for a in node.names if a.name.startswith("resnet5m.")]
    if not isinstance(node, ast.ImportFrom) or not (node.level or (node.module or "").startswith("resnet5m")):
        return []
    if node.level:
        base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
    else:
        base = node.module.split(".")[1:]
    # `from . import x`, `from .weights import read`: a submodule when x is one, else a name defined in base
    return [base + [a.name] if ".".join(base + [a.name]) in files else base for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (`from .x import`, `from . import x`, absolute).

    Importing a subpackage's module runs the subpackage's __init__ first, so that is an edge too, except from
    inside the subpackage, where the __init__ is already running.
    """
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = graph.setdefault(name, set())
        parts = name.split(".")
        package = parts if path.name == "__init__.py" and name != "__init__" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            for target in imported(node, package, files):
                if not target:
                    edges.add("__init__")
                prefixes = (".".join(target[:depth]) for depth in range(1, len(target) + 1))
                edges.update(p for p in prefixes if p in files and not (name == p or name.startswith(p + ".")))
        edges.discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert {"weights.read", "errors", "model"} <= graph["weights.formats"]
    assert "weights" in graph["cli"] and "export" in graph["cli"]  # export is imported inside build_parser
    assert "weights" not in graph["weights.formats"]  # inside the subpackage its __init__ is not an edge
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
