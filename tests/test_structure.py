"""The package's import structure: no import cycles, no private names across packages.

Every module of ``kprune`` is parsed with :mod:`ast` (nothing is imported), and
every ``import``/``from ... import`` in it is followed, those inside functions
included, relative imports resolved (those under ``if TYPE_CHECKING:`` never
run and are left out).  Two modules import each other, directly or
through others, only when one of them is in the wrong place; and a ``_private``
name is private to its own subpackage (``kprune.evaluate``, ``kprune.kaldi``,
...), so another subpackage that needs it needs a public home for it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "kprune"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module under ``root``: dotted name -> file (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for every import of ``module`` within the package.

    ``from a.b import c`` counts as an import of ``a.b.c`` when that is a module,
    otherwise as an import of name ``c`` from ``a.b``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    found.append((_nearest_module(alias.name, modules), "", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node.level, node.module)
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    found.append((sub, "", node.lineno))
                else:
                    found.append((_nearest_module(target, modules), alias.name, node.lineno))
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree``, functions' bodies included, except what is under
    ``if TYPE_CHECKING:`` (imports for annotations only, never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _nearest_module(name: str, modules: dict[str, Path]) -> str:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: the modules it imports}``.

    Importing ``a.b.c`` runs ``a/b/__init__.py`` first, so it counts as an
    import of the package ``a.b`` too, unless that package is one of the
    importer's own (Python has initialised those before the importer runs).
    """
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        own = _packages_of(name)
        for target, _, _ in imports_of(name, path, modules):
            if target and target != name:
                graph[name].add(target)
                graph[name].update(p for p in _packages_of(target) if p in modules and p not in own and p != name)
    return graph


def _packages_of(module: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b]``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None.  A package's ``__init__``
    importing its own submodules and back is a cycle too: Python runs the
    ``__init__`` first whichever is imported."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt, black) == grey:
                return stack[stack.index(nxt):] + [nxt]
            if colour.get(nxt) == white:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = black
        return None

    for start in sorted(graph):
        if colour[start] == white:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def subpackage(module: str) -> str:
    """``kprune.evaluate.base`` -> ``kprune.evaluate``; a top-level module is its own package."""
    parts = module.split(".")
    return ".".join(parts[:2])


def private_imports(modules: dict[str, Path], root: Path = ROOT) -> list[str]:
    """``where: from what import _name`` for every private name taken from another subpackage."""
    found = []
    for name, path in modules.items():
        for target, imported, line in imports_of(name, path, modules):
            private = imported.startswith("_") and not imported.startswith("__")
            private_module = any(p.startswith("_") and not p.startswith("__") for p in target.split(".")[2:])
            if (private or private_module) and subpackage(target) != subpackage(name):
                found.append(f"{path.relative_to(root.parent)}:{line}: from {target} import {imported or '*'}")
    return found


def test_no_import_cycle():
    cycle = find_cycle(import_graph(module_names()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_name_imported_across_packages():
    found = private_imports(module_names())
    assert not found, "private names imported from another package:\n" + "\n".join(found)


# The checks themselves, on small packages with known answers.

def _write(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp_path / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_names(tmp_path / PACKAGE)


def test_a_cycle_through_a_function_level_relative_import_is_found(tmp_path):
    modules = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import f\n",
        "b.py": "def f():\n    from . import c\n",
        "c/__init__.py": "",
        "c/d.py": "import kprune.a\n",
        "c/e.py": "from ..c import d\n",
    })
    modules["kprune.c"].write_text("from .e import x\n")
    assert find_cycle(import_graph(modules)) == ["kprune.a", "kprune.b", "kprune.c", "kprune.c.e",
                                                 "kprune.c.d", "kprune.a"]


def test_importing_a_submodule_runs_its_package_first(tmp_path):
    modules = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "from kprune.p.q import f\n",
        "p/__init__.py": "from kprune.p import r\n",
        "p/q.py": "",
        "p/r.py": "def g():\n    from kprune import a\n",
    })
    assert find_cycle(import_graph(modules)) == ["kprune.a", "kprune.p", "kprune.p.r", "kprune.a"]


def test_no_cycle_in_a_tree(tmp_path):
    modules = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kprune.a import A\n",
    })
    assert find_cycle(import_graph(modules)) is None


@pytest.mark.parametrize("text, bad", [
    ("from ..b.m import _hidden\n", True),
    ("from kprune.b.m import _hidden\n", True),
    ("from ..b import _m\n", True),
    ("from ..b.m import public\n", False),
    ("from .n import _same_package\n", False),
    ("from ..b.m import __version__\n", False),
])
def test_private_names_across_packages(tmp_path, text, bad):
    modules = _write(tmp_path, {
        "__init__.py": "", "a/__init__.py": "", "a/n.py": "", "a/x.py": text,
        "b/__init__.py": "", "b/m.py": "", "b/_m.py": "",
    })
    assert bool(private_imports(modules, tmp_path / PACKAGE)) is bad
