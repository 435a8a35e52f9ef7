"""The import graph of nbtl's own modules (module-level and in-function imports alike) has no cycle, and no
module imports another's private name (``_x``): what one room of the house needs from another is public."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "nbtl"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports() -> tuple[nx.DiGraph, list[str]]:
    """nbtl's import graph (module -> module it imports) and the private names imported across modules."""
    known = modules()

    def owner(name: str) -> str:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name

    graph, private = nx.DiGraph(), []
    graph.add_nodes_from(known)
    for module, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "nbtl":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.append(owner(full if full in known else node.module))
                    if alias.name.startswith("_") and not alias.name.startswith("__") and full not in known:
                        private.append(f"{module} imports {node.module}.{alias.name} ({path.name}:{node.lineno})")
            elif isinstance(node, ast.Import):
                targets += [owner(a.name) for a in node.names if a.name.split(".")[0] == "nbtl"]
            graph.add_edges_from((module, t) for t in targets if t and t != module)
    return graph, private


def test_the_graph_is_read_from_every_module():
    graph, _ = imports()
    assert {"nbtl.cli", "nbtl.search.runner", "nbtl.tracking.store", "nbtl.search.parameter"} <= set(graph)
    assert graph.has_edge("nbtl.search.space", "nbtl.search.parameter")
    assert graph.has_edge("nbtl.search.cluster", "nbtl.tracking.store")


def test_nbtl_imports_have_no_cycle():
    graph, _ = imports()
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_another_modules_private_name():
    _, private = imports()
    assert not private, "\n".join(private)


#: The floors of docs/architecture.md: a room may import the rooms on its floor and below, never above.
FLOORS = {
    0: ("errors", "safe_yaml", "resources", "ranking", "codec"),
    1: ("data", "backbones", "config", "heads", "regularizers"),
    2: ("transfer", "features", "fit", "feeds", "train"),
    3: ("tracking", "models"),
    4: ("heuristics",),
    5: ("search", "zoo"),
    6: ("cli", "api", "__main__"),
}


def floor_of(module: str) -> int | None:
    """The floor of an nbtl module (``nbtl.search.plan`` -> 5); None for the package itself (``nbtl``)."""
    room = module.split(".")[1] if "." in module else None
    return next((floor for floor, rooms in FLOORS.items() if room in rooms), None)


def test_every_room_has_a_floor():
    assert all(floor_of(m) is not None for m in modules() if m != "nbtl"), [
        m for m in modules() if m != "nbtl" and floor_of(m) is None
    ]


def test_no_room_imports_a_room_above_it():
    """Imports that run (at the top or in a function), not those for type checkers only (``if TYPE_CHECKING``)."""
    known, upward = modules(), []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("nbtl."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("nbtl.")]
            for name in names:
                mine, theirs = floor_of(module), floor_of(name)
                if mine is not None and theirs is not None and theirs > mine:
                    upward.append(f"{module} (floor {mine}) imports {name} (floor {theirs}), {path.name}:{node.lineno}")
    assert not upward, "\n".join(upward)
