"""The import graph of nbtl's own modules (module-level and in-function imports alike) has no cycle, and no
module imports another's private name (``_x``): what one room of the house needs from another is public. nbtl's
modules are imported at the top of each file but for a short list (``LAZY``), and ``nbtl --help`` loads no heavy
library (how fast it is, ``benchmarks/cli_startup.py`` prints)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

from conftest import run_nbtl

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


#: Issue 20: no room of the house is a hall; a file past this is split by idea.
MAX_LINES = 500


def test_no_file_is_over_500_lines():
    long = {m: n for m, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


#: The floors of docs/architecture.md: a room may import the rooms on its floor and below, never above.
FLOORS = {
    0: ("errors", "safe_yaml", "resources", "ranking", "codec", "registry"),
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


#: The imports of nbtl's own modules that stay inside a function, ``(importing module, imported module)``, each
#: with why; every other import of an nbtl module is at the top of its file. A command's work loads through
#: ``nbtl.cli.common.command`` (one ``importlib`` call, not an import statement), so that ``nbtl --help`` stays light.
LAZY = {
    # The package faces: what needs torch or runs a search loads when first used, not when the package is imported.
    ("nbtl.fit", "nbtl.fit.features"): "nbtl.fit's measures load without torch (block_features, meta_features)",
    ("nbtl.models", "nbtl.models.classifier"): "importing nbtl.models imports neither torch nor MLflow",
    ("nbtl.search", "nbtl.search.runner"): "nbtl.search.run_search: the search engine loads when a search runs",
    ("nbtl.search", "nbtl.search.api"): "nbtl.search(...) is nbtl.search.api.search, which imports the engine",
    ("nbtl.zoo", "nbtl.zoo.api"): "nbtl.zoo(...) is nbtl.zoo.api.zoo, which imports the study's engine",
    # Ray loads only once a search or a zoo study runs, after nbtl.search.cluster.use_token_auth set its token
    # authentication: Ray reads RAY_AUTH_MODE when it is first imported. These modules import Ray at their top.
    ("nbtl.search.tuner", "nbtl.search.callbacks"): "Ray: the search's Ray Tune callback",
    ("nbtl.search.tuner", "nbtl.search.study_store"): "Ray: the Optuna study's mirror, a Ray Tune callback",
    ("nbtl.zoo.study", "nbtl.zoo.callbacks"): "Ray: the zoo study's Ray Tune callback",
}


def in_function_imports() -> list[tuple[str, str, str]]:
    """``(importing module, imported module, file:line)`` of every import of an nbtl module inside a function or
    class (one per module a statement names); imports for type checkers only (``if TYPE_CHECKING``) are not run."""
    known, found = modules(), []

    def owner(name: str) -> str:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name

    def visit(node: ast.AST, module: str, path: Path, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                visit(child, module, path, True)
                continue
            targets = set()
            if isinstance(child, ast.ImportFrom) and child.level == 0 and (child.module or "").split(".")[0] == "nbtl":
                targets = {owner(f"{child.module}.{a.name}") for a in child.names}
            elif isinstance(child, ast.Import):
                targets = {owner(a.name) for a in child.names if a.name.split(".")[0] == "nbtl"}
            if inside:
                found.extend((module, target, f"{path.name}:{child.lineno}") for target in sorted(targets))
            visit(child, module, path, inside)

    for module, path in known.items():
        visit(ast.parse(path.read_text(), str(path)), module, path, False)
    return found


def test_nbtl_modules_are_imported_at_the_top_but_the_few_that_must_wait():
    found = in_function_imports()
    unlisted = [
        f"{where}: {module} imports {target} inside a function; import it at the top of the file (or, for a reason "
        "that holds, list it in LAZY)"
        for module, target, where in found
        if (module, target) not in LAZY
    ]
    assert not unlisted, "\n".join(unlisted)
    gone = set(LAZY) - {(module, target) for module, target, _ in found}
    assert not gone, f"LAZY lists imports that are not in a function any more: {sorted(gone)}"


def test_every_command_names_a_function_of_a_run_module():
    """``command("nbtl.cli.x_run:f")`` is imported only when the command runs: each names a module and its function."""
    known, references = modules(), []
    for module, path in known.items():
        if module.startswith("nbtl.cli"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "command":
                    references.append(node.args[0].value)
    assert len(references) >= 9, references
    for reference in references:
        module, _, function = reference.partition(":")
        assert module in known, reference
        tree = ast.parse(known[module].read_text())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, reference


#: What ``import nbtl.cli`` (and so ``nbtl --help``) must not load: a command loads them when it runs.
HEAVY = ("torch", "ray", "mlflow", "optuna", "pandas", "sklearn", "matplotlib", "torchvision")


def test_the_command_line_imports_no_heavy_library():
    code = f"import nbtl.cli, sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_help_exits_0(tmp_path):
    result = run_nbtl("--help", cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: nbtl"), (result.stdout, result.stderr)


def test_the_embedded_rays_reaper_runs_as_a_script_of_the_standard_library_alone():
    # Every search on an embedded Ray starts it: imported as nbtl.search.reaper it would import torch (3 s of CPU).
    path = PACKAGE / "search" / "reaper.py"
    tree = ast.parse(path.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names - set(sys.stdlib_module_names)
    # as embedded_ray_reaper starts it; its driver (stdin's write end) already gone: it reaps nothing and exits
    done = subprocess.run(
        [sys.executable, "-I", str(path), "0-test"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr, done.stderr
