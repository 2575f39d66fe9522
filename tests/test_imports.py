"""The product's import graph: ``gridnode/`` and ``protocol/`` never import ``simulations/``
or ``benchmarks/``, have no import cycle, and every module imports.

The graph comes from the source (``ast``), not from ``sys.modules``, so that an import
inside a function counts as much as one at the top of a module: a cycle hidden in a
function is still a cycle, it only fails later, at run time.  Imports under
``if TYPE_CHECKING:`` do not count: they never run.  An import of a module's own parent
package does not count either: importing a submodule always imports its parents first,
so that edge is implicit, and counting it would flag every ``__init__`` that re-exports
its submodules.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path

import pytest

#: The product: what ships and runs on people's machines.
PRODUCT = ("gridnode", "protocol")
#: What the product must never import: test and measurement code built on top of it.
FORBIDDEN = ("simulations", "benchmarks")

Graph = Mapping[str, Iterable[str]]


# --- reading imports -----------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, at any depth, except under TYPE_CHECKING."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:  # `else:` of TYPE_CHECKING runs
                if isinstance(other, ast.Import | ast.ImportFrom):
                    yield other
                else:
                    yield from _import_nodes(other)
        else:
            yield from _import_nodes(child)


def imported_names(source: str, module: str, *, is_package: bool) -> set[str]:
    """The absolute dotted names ``module`` (whose source is ``source``) imports.

    ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (``c`` may be a submodule or a
    name; the caller keeps what is a module).  Relative imports are resolved against
    ``module`` (a package's ``__init__`` is its own anchor).
    """
    names: set[str] = set()
    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            anchor = parts if is_package else parts[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _known(name: str, modules: Iterable[str]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules``."""
    known = set(modules)
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def module_edges(module: str, imports: Iterable[str], modules: Iterable[str]) -> set[str]:
    """The modules among ``modules`` that ``module`` imports, minus itself and its
    parent packages (imported implicitly, see the module docstring)."""
    out = set()
    for name in imports:
        target = _known(name, modules)
        if target is not None and target != module and not module.startswith(target + "."):
            out.add(target)
    return out


# --- finding cycles ------------------------------------------------------------------------


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one node (iterative, so a
    deep import chain cannot hit the recursion limit), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return sorted(found)


def cycle_through(graph: Graph, component: Iterable[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component, as ``[a, b, ..., a]``:
    the shortest way from its first member back to itself (breadth first)."""
    members = set(component)
    start = min(members)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child not in members:
                    continue
                if child == start:
                    back = [node]  # node, the node before it, ..., start
                    while back[-1] != start:
                        back.append(previous[back[-1]])
                    return [*reversed(back), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise ValueError(f"{sorted(members)} is not strongly connected")


def find_cycles(graph: Graph) -> list[list[str]]:
    """Every import cycle, one concrete example per strongly connected component."""
    return [cycle_through(graph, component) for component in strongly_connected(graph)]


# --- the product's graph -------------------------------------------------------------------


@cache
def product_modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the product: its dotted name -> (source file, is a package)."""
    found: dict[str, tuple[Path, bool]] = {}
    for package_name in PRODUCT:
        package = importlib.import_module(package_name)
        found[package_name] = (Path(package.__file__ or ""), True)
        for info in pkgutil.walk_packages(package.__path__, prefix=package_name + "."):
            folder = Path(getattr(info.module_finder, "path", ""))
            leaf = info.name.rpartition(".")[2]
            path = folder / leaf / "__init__.py" if info.ispkg else folder / f"{leaf}.py"
            found[info.name] = (path, info.ispkg)
    return found


@cache
def product_imports() -> dict[str, set[str]]:
    """Every product module -> every dotted name it imports (anywhere but TYPE_CHECKING)."""
    return {
        name: imported_names(path.read_text(encoding="utf-8"), name, is_package=is_package)
        for name, (path, is_package) in product_modules().items()
    }


def product_graph() -> dict[str, set[str]]:
    """Product module -> the product modules it imports."""
    modules = product_modules()
    return {name: module_edges(name, names, modules) for name, names in product_imports().items()}


# --- the checks ----------------------------------------------------------------------------


def test_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    cyclic = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert strongly_connected(cyclic) == [["a", "b", "c"]]
    assert find_cycles(cyclic) == [["a", "b", "c", "a"]]
    two = {"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"z"}, "z": {"x", "y"}}
    assert find_cycles(two) == [["a", "b", "a"], ["x", "y", "z", "x"]]
    acyclic = {"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set(), "e": {"d"}}
    assert strongly_connected(acyclic) == []
    assert find_cycles(acyclic) == []
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(5000)}  # no recursion limit
    assert find_cycles(chain) == []
    chain["m5000"] = {"m0"}
    assert len(strongly_connected(chain)[0]) == 5001


def test_import_reader_resolves_relative_local_and_type_checking_imports() -> None:
    source = """
from __future__ import annotations
import os.path
from typing import TYPE_CHECKING
from . import sibling
from .. import uncle
from .sub.deep import Name
if TYPE_CHECKING:
    from .typing_only import Hint
else:
    from .runtime import Real

def later() -> None:
    from pkg.lazy import thing
"""
    names = imported_names(source, "pkg.mod.child", is_package=False)
    assert {"os.path", "pkg.mod.sibling", "pkg.uncle", "pkg.mod.sub.deep.Name"} <= names
    assert {"pkg.mod.runtime", "pkg.lazy.thing"} <= names
    assert not any("typing_only" in name for name in names)
    assert "pkg.mod.child.x" in imported_names("from . import x", "pkg.mod.child", is_package=True)
    modules = ["pkg", "pkg.mod", "pkg.mod.child", "pkg.mod.sibling", "pkg.lazy", "pkg.mod.sub"]
    assert module_edges("pkg.mod.child", names, modules) == {
        "pkg.mod.sibling",
        "pkg.mod.sub",
        "pkg.lazy",
    }  # pkg and pkg.mod are parents: implicit


def test_product_finds_its_modules() -> None:
    modules = product_modules()
    assert {"gridnode.cli", "gridnode.node", "protocol"} <= set(modules)
    assert all(path.is_file() for path, _ in modules.values()), "a module without a file"


def test_product_never_imports_simulations_or_benchmarks() -> None:
    offenders = sorted(
        f"{module} imports {name}"
        for module, names in product_imports().items()
        for name in names
        if name.split(".")[0] in FORBIDDEN
    )
    assert not offenders, "the product imports test code:\n" + "\n".join(offenders)


def test_no_import_cycle_among_product_modules() -> None:
    graph = product_graph()
    components = strongly_connected(graph)
    assert not components, "import cycles among product modules:\n" + "\n".join(
        " -> ".join(cycle_through(graph, component))
        + (f" (one cycle of the knot {', '.join(component)})" if len(component) > 2 else "")
        for component in components
    )


def test_every_product_module_imports() -> None:
    failures = []
    for name in sorted(product_modules()):
        if name.rpartition(".")[2] == "__main__":
            continue  # `python -m` entry points run their command when imported
        try:
            importlib.import_module(name)
        except Exception as exc:  # every failure is reported below, not just the first
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    if failures:
        pytest.fail("modules that do not import:\n" + "\n".join(failures))
