"""The package's rooms and the one direction imports flow between them, checked on the source.

schemas ← operators, models ← table ← pipelines ← moderation, reports ← demo, serve ← jobs.
A module may import its own room or a room to its left; per-batch operators never import Ray or
LanceDB (they run inside Ray workers and must stay testable without a cluster); no module imports
itself back through a chain (a cycle). Imports under `if TYPE_CHECKING:` are not imports at run
time and are left out; imports inside functions are counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "clipline"
LAYERS = {
    "schemas": 0,
    "operators": 1,
    "models": 1,
    "table": 2,
    "pipelines": 3,
    "moderation": 4,
    "reports": 4,
    "demo": 5,
    "serve": 5,
    "jobs": 6,
}
OPERATORS_NEVER_IMPORT = ("ray", "lancedb")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_names(tree: ast.AST) -> set[str]:
    """Absolute module names imported anywhere in the tree, except under `if TYPE_CHECKING:`."""
    names: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if is_type_checking_block(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return names


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = imported_names(ast.parse(path.read_text(), str(path)))
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def external_imports(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_names(ast.parse(path.read_text(), str(path)))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_flow_one_way_between_rooms():
    upward = [
        f"{module} → {target}"
        for module, targets in import_graph().items()
        for target in targets
        if room(module) and room(target) and LAYERS[room(target)] > LAYERS[room(module)]
    ]
    assert upward == []


def test_every_module_lives_in_a_known_room():
    loose = [name for name in import_graph() if name != "clipline" and room(name) is None]
    assert loose == []


@pytest.mark.parametrize("path", sorted((PACKAGE / "operators").glob("*.py")), ids=lambda path: path.name)
def test_operators_import_neither_ray_nor_lancedb(path):
    assert external_imports(path).isdisjoint(OPERATORS_NEVER_IMPORT)
