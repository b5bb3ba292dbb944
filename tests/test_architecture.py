"""The house rules of the code, checked on its source: no import cycle among ``stitch``/``modules_zoo``
modules (imports inside functions count), no ``_private`` name used across files, only the CLI
imports the command modules, and no file over 500 lines.

Imports under ``if TYPE_CHECKING:`` are left out: they never run, and annotations may name a type
of a room above without depending on it at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stitch", "modules_zoo")
#: modules that only the command line may import (each is one command)
COMMANDS = {"stitch.run", "stitch.show"}
MAX_LINES = 500


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the two packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return out


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def known(name: str) -> str | None:
    """``name`` if it is a module of the project, else the longest prefix that is."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every run-time import of ``module``
    that stays inside the project."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    out = []
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = known(alias.name)
                if target:
                    out.append((target, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:  # `from package import submodule`
                    out.append((sub, None, node.lineno))
                elif known(source):
                    out.append((known(source), alias.name, node.lineno))  # type: ignore[arg-type]
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def cycles(graph: dict[str, list[tuple[str, str | None, int]]]) -> list[list[str]]:
    """The import cycles of ``graph``: strongly connected components of two or more modules."""
    edges = {m: sorted({t for t, _, _ in graph[m] if t != m}) for m in graph}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
            if len(component) > 1:
                found.append(sorted(component))

    for m in graph:
        if m not in index:
            visit(m)
    return found


def test_the_graph_sees_function_level_and_relative_imports():
    assert any(t == "stitch.registry" and n == "BASELINES" for t, n, _ in GRAPH["stitch.runs"])
    # resolved_insertion imports the zoo inside the function
    assert any(t == "modules_zoo" for t, _, _ in GRAPH["stitch.runs"])
    assert any(
        t == "modules_zoo.registry" for t, _, _ in GRAPH["modules_zoo.coordatt"]
    )  # `from .registry import`


def test_cycle_detection_finds_a_planted_cycle():
    planted = dict(GRAPH, **{"stitch.errors": [*GRAPH["stitch.errors"], ("stitch.registry", "Registry", 1)]})
    assert ["stitch.errors", "stitch.registry"] in cycles(planted)


def test_no_import_cycles():
    found = cycles(GRAPH)
    assert found == [], "import cycles (function-level imports included): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def private_uses() -> list[str]:
    """``file:line name`` for each ``_private`` name taken from another project module, by
    ``from m import _x`` or as ``m._x`` on an imported module."""
    out = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases: dict[str, str] = {}
        for node in runtime_nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if known(alias.name) and known(alias.name) != module:
                        aliases[alias.asname or alias.name] = alias.name
        for target, name, line in GRAPH[module]:
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                out.append(f"{path.relative_to(ROOT)}:{line} {target}.{name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                base = node.value
                dotted = []
                while isinstance(base, ast.Attribute):
                    dotted.append(base.attr)
                    base = base.value
                if isinstance(base, ast.Name) and base.id in aliases:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return out


def test_no_private_names_across_files():
    assert private_uses() == []


def test_only_the_cli_imports_command_modules():
    offenders = [
        f"{m} imports {t}" for m in MODULES for t, _, _ in GRAPH[m] if t in COMMANDS and m != "stitch.cli"
    ]
    assert offenders == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_file_over_500_lines(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"


def reachable(module: str) -> set[str]:
    """Every project module ``module`` imports, directly or through others (run-time imports)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for target, _, _ in GRAPH[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def in_room(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


#: (room, rooms it must know nothing of): the "knows nothing of" column of docs/architecture.md
KNOWS_NOTHING_OF = [
    ("modules_zoo", ["stitch"]),
    ("stitch.config", ["stitch.baselines", "stitch.surgery", "stitch.engine", "stitch.data", "stitch.store"]),
    ("stitch.plan", ["stitch.baselines", "stitch.surgery", "stitch.engine", "stitch.data"]),
    ("stitch.wrappers", ["stitch.surgery", "stitch.points", "stitch.baselines", "stitch.config"]),
    ("stitch.data", ["stitch.baselines", "stitch.surgery", "stitch.build", "stitch.engine", "modules_zoo"]),
    ("stitch.tasks", ["stitch.engine", "stitch.config", "stitch.session"]),
    (
        "stitch.engine",
        ["stitch.tasks.segmentation", "stitch.tasks.instance", "stitch.store", "stitch.session"],
    ),
    ("stitch.store", ["stitch.engine", "stitch.session", "stitch.build", "stitch.data"]),
    ("stitch.runs", ["stitch.session", "stitch.engine", "stitch.store", "stitch.report", "stitch.sweep"]),
    ("stitch.report", ["stitch.session", "stitch.engine", "stitch.sweep"]),
    ("stitch.show", ["stitch.session", "stitch.engine", "stitch.sweep"]),
    ("stitch.session", ["stitch.report", "stitch.sweep"]),
]


@pytest.mark.parametrize(("room", "forbidden"), KNOWS_NOTHING_OF, ids=[r for r, _ in KNOWS_NOTHING_OF])
def test_rooms_know_nothing_of_the_rooms_above(room, forbidden):
    found = sorted(
        f"{m} -> {t}"
        for m in MODULES
        if in_room(m, room)
        for t in reachable(m)
        if any(in_room(t, f) for f in forbidden) and not in_room(t, room)
    )
    assert found == []
