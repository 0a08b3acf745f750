"""No import cycles inside tvmsplit (read statically with ``ast``; nothing is imported).

Every ``import`` counts, at module level and inside functions alike. A function-level import is
how this code base keeps TVM and heavy modules off the import path, and it does avoid the
ImportError of a module-level cycle, but it does not make the layering one-way: if ``bundle``
calls into ``compile`` and ``compile`` calls back into ``bundle``, neither can be read, tested or
replaced alone, whenever the import runs. So a lazy import closing a loop is a cycle too.
``if TYPE_CHECKING:`` imports are left out (they never run).

Relative imports are resolved against the importing module's package; ``from pkg import name``
points at the submodule ``pkg.name`` when there is one, else at ``pkg``. Importing
``tvmsplit.a.b`` from outside ``tvmsplit.a`` also runs ``tvmsplit/a/__init__.py``, so it is an
edge to the package too. Cycles are reported per strongly connected component, each with one
closed path through it.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "tvmsplit"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Cycles tolerated for now, each as its set of modules: none (bundle <-> compile was broken by
# moving build_bundle to build.py). Keep it empty; the test fails when a listed one is gone.
KNOWN_CYCLES: list[frozenset[str]] = []


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom in the tree, except inside ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children = node.orelse
        stack.extend(children)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The tvmsplit modules that module ``name`` (file ``path``) imports."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            wanted = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from pkg import x` imports the submodule pkg.x when there is one, else a name of pkg
            wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                      for a in node.names]
        for target in wanted:
            while target and target not in modules:   # `import a.b.c` where c is a name
                target = target.rpartition(".")[0]
            if not target or not target.startswith(PACKAGE):
                continue
            targets.add(target)
            parent = target.rpartition(".")[0]           # its packages' __init__ run too
            while parent and not name.startswith(parent + ".") and name != parent:
                targets.add(parent)
                parent = parent.rpartition(".")[0]
    targets.discard(name)
    return targets


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    modules = modules if modules is not None else module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One closed path through ``component``, starting and ending at its first module."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:                                      # breadth first: a shortest loop back
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{component} is not a cycle")  # cannot happen for an SCC


def cycles(graph: dict[str, set[str]]) -> list[tuple[frozenset[str], str]]:
    return [(frozenset(c), " -> ".join(a_cycle(graph, c))) for c in strongly_connected(graph)]


# ---- the checks ---------------------------------------------------------------------------------
def test_no_import_cycles_but_the_known_ones():
    found = cycles(import_graph())
    new = [path for comp, path in found if comp not in KNOWN_CYCLES]
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in {comp for comp, _ in found}]
    assert not new, "import cycles in tvmsplit (break each one):\n  " + "\n  ".join(new)
    assert not gone, f"known cycle(s) {gone} are gone: remove them from KNOWN_CYCLES"


def test_the_walk_sees_relative_lazy_and_package_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import thing\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from ..top import g\n")
    (pkg / "top.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from .other import T\nfrom tvmsplit.sub import leaf\n")
    (pkg / "other.py").write_text("from . import top\n")
    modules = module_names(pkg)
    graph = import_graph(modules)
    assert graph["tvmsplit.sub"] == {"tvmsplit.sub.leaf"}
    assert graph["tvmsplit.sub.leaf"] == {"tvmsplit.top"}                 # lazy, two dots up
    assert graph["tvmsplit.top"] == {"tvmsplit.sub", "tvmsplit.sub.leaf"}  # not TYPE_CHECKING
    assert graph["tvmsplit.other"] == {"tvmsplit.top"}                    # `from . import top`
    found = cycles(graph)
    assert [sorted(c) for c, _ in found] == [["tvmsplit.sub", "tvmsplit.sub.leaf", "tvmsplit.top"]]
    assert found[0][1] == "tvmsplit.sub -> tvmsplit.sub.leaf -> tvmsplit.top -> tvmsplit.sub"

