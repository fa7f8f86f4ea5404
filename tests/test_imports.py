"""Data flows one way: no import cycle between modules, and the sub-packages form a DAG.

The graph is built from the source (every ``import`` statement, those inside functions
included), not from ``sys.modules``, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1] / "thermanopt"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


@lru_cache(maxsize=1)
def import_graph() -> nx.DiGraph:
    """Edges a -> b: module a imports module b (both inside thermanopt)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (
                    _resolve(name, is_package, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                # "from pkg import sub" imports the submodule pkg.sub when it exists,
                # anything else imports pkg itself
                subs = [f"{base}.{a.name}" for a in node.names]
                targets = [t for t in subs if t in modules]
                if len(targets) < len(subs):
                    targets.append(base)
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target in modules:
                    graph.add_edge(name, target)
    return graph


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def test_graph_sees_lazy_imports():
    """The parser finds imports inside functions (so the test below can fail)."""
    src = "def f():\n    from .b import c\n"
    tree = ast.parse(src)
    found = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert found and found[0].level == 1
    assert _resolve("thermanopt.entropy.model", False, 2, "manifolds") == "thermanopt.manifolds"
    g = nx.DiGraph([("a", "b"), ("b", "a")])
    assert list(nx.simple_cycles(g))


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    # a package's __init__ re-exports its modules: edges package -> own submodule are fine,
    # a submodule importing its own package's __init__ back is a cycle like any other
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_subpackages_form_a_dag():
    graph = import_graph()
    packages = nx.DiGraph()
    for a, b in graph.edges:
        pa, pb = _subpackage(a), _subpackage(b)
        if pa != pb and pa != "thermanopt" and pb != "thermanopt":
            packages.add_edge(pa, pb)
    cycles = list(nx.simple_cycles(packages))
    assert not cycles, f"sub-package cycles: {cycles}"


@pytest.mark.parametrize(
    "lower, upper",
    [
        ("thermanopt.manifolds", "thermanopt.entropy"),
        ("thermanopt.manifolds", "thermanopt.optimizers"),
        ("thermanopt.entropy", "thermanopt.optimizers"),
        ("thermanopt.optimizers", "thermanopt.analysis"),
    ],
)
def test_layers_import_downwards_only(lower, upper):
    graph = import_graph()
    bad = [(a, b) for a, b in graph.edges if a.startswith(lower) and b.startswith(upper)]
    assert not bad, f"{lower} imports {upper}: {bad}"
