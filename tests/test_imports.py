"""The cvlth module graph has no cycles: every import arrow points down.

The graph is read from the source with ``ast`` (nothing is imported): module-level imports and imports inside
functions both count, since a lazy import inside a function is still an arrow, only a hidden one. Imports under
``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is_package) for every module under ``src``."""
    found = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in the tree, at any depth, except under ``if TYPE_CHECKING:``."""
    out: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def _targets(name: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """The modules ``node`` (in module ``name``) imports: what it names, and the packages above that,
    which importing it runs first, except those ``name`` lives in (already running when it runs).
    A name taken from one's own package (``from cvlth.cli import app`` in ``cvlth.cli.x``) counts."""
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        if node.level:
            package = name.split(".") if is_package else name.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        # `from x import y` runs x.y when y is a submodule, else only x.
        wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    hit = set()
    for target in wanted:
        parts = target.split(".")
        # Importing a.b.c also runs a/__init__ and a/b/__init__, unless the importer lives inside them.
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            own_package = name == prefix or name.startswith(prefix + ".")
            if prefix in modules and (prefix == target != name or not own_package):
                hit.add(prefix)
    return hit


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = _modules(src)
    graph = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = set().union(*(_targets(name, is_package, n, set(modules)) for n in _imports(tree)))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _one_loop(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A concrete loop through the component's first module, for a readable failure."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return component


def test_graph_reader_sees_relative_lazy_and_submodule_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import x\n")
    (pkg / "sub" / "leaf.py").write_text("x = 1\n")
    (pkg / "a.py").write_text("def f():\n    from p import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nfrom .sub import x\nif TYPE_CHECKING:\n    import p.a\n"
    )
    (pkg / "c.py").write_text("import p.sub.leaf\nfrom p.sub import leaf\nfrom p import c\n")
    graph = import_graph(tmp_path)
    assert graph["p.a"] == {"p.b"}  # lazy import counts; from-import of a submodule resolves to it
    assert graph["p.b"] == {"p.sub"}  # TYPE_CHECKING import left out; relative import resolved
    assert graph["p.c"] == {"p.sub", "p.sub.leaf"}  # importing a submodule also runs its package
    assert graph["p.sub"] == {"p.sub.leaf"}  # a package's own __init__ runs before its members: no arrow
    assert graph["p.sub.leaf"] == set()
    assert cycles(graph) == []
    (pkg / "sub" / "leaf.py").write_text("def g():\n    from p.sub import x\n")  # a name of its own package
    assert cycles(import_graph(tmp_path)) == [["p.sub", "p.sub.leaf"]]
    (pkg / "sub" / "leaf.py").write_text("from p.a import f\n")
    (pkg / "a.py").write_text("from p.sub import leaf\n")
    assert cycles(import_graph(tmp_path)) == [["p.a", "p.sub", "p.sub.leaf"]]


def test_no_import_cycles_in_cvlth() -> None:
    graph = import_graph()
    assert "cvlth.pruning.imp" in graph  # the reader found the package
    found = cycles(graph)
    if found:
        loops = "\n".join(" -> ".join(_one_loop(c, graph)) + f"   (component: {', '.join(c)})" for c in found)
        pytest.fail(f"{len(found)} import cycle(s) in src/cvlth:\n{loops}")
