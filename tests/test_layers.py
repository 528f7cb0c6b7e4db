"""The layers import only downward, and no module imports itself back through others.

    0  ground        msaflow (the package itself), msaflow.errors, msaflow.settings, msaflow.atomic,
                     msaflow.modalities, msaflow.devices,
                     msaflow.prefect_server
    1  data, models  msaflow.feature_store, msaflow.models (never each other)
    2  tasks         msaflow.tasks
    3  flows         msaflow.flows
    4  entry points  the rest of msaflow: the CLI (msaflow.cli, msaflow.commands) and the Python
                     API (msaflow.api)

``msaflow.models`` ... are the folders ``models/`` ... at the top of the repository (the wheel maps
them into the package, ``pyproject.toml``); modules are named as they are imported.

Every import counts, at module level or inside a function: a lazy import that points up is still a
dependency that points up. Read with ``ast``, so nothing is imported to check it. The one
exception is ``LAZY_FACADE``: the package's PEP 562 ``__getattr__`` that re-exports the API.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("feature_store", "models", "tasks", "flows")  # <root>/<name> is msaflow.<name>
GROUND = {
    "msaflow",
    "msaflow.errors",
    "msaflow.settings",
    "msaflow.atomic",
    "msaflow.modalities",
    "msaflow.devices",
    "msaflow.prefect_server",
}
LAYER = {"feature_store": 1, "models": 1, "tasks": 2, "flows": 3}  # msaflow.<name>; other: 4
# The one arrow allowed to point up: ``msaflow/__init__.py`` re-exports the Python API lazily (PEP
# 562), so that ``msaflow.run`` works while ``import msaflow`` imports nothing of the project
# (``tests/msaflow/test_api.py`` checks ``sys.modules`` in a fresh interpreter). Only imports of
# these modules, only inside that module's top-level ``__getattr__``, are left out of the graph;
# the same import anywhere else in the module, or of anything else, still counts.
LAZY_FACADE = {"msaflow": ("__getattr__", {"msaflow.api"})}


def group(module: str) -> str:
    """``msaflow.models.mmafnet`` -> ``models``; the rest of msaflow -> ``msaflow``."""
    parts = module.split(".")
    assert parts[0] == "msaflow", module
    return parts[1] if len(parts) > 1 and parts[1] in LAYER else "msaflow"


def layer(module: str) -> int:
    return 0 if module in GROUND else LAYER.get(group(module), 4)


def _modules() -> dict[str, Path]:
    out = {}
    for folder, prefix in [(pkg, ["msaflow"]) for pkg in SUBPACKAGES] + [("msaflow", [])]:
        for path in (ROOT / folder).rglob("*.py"):
            parts = prefix + list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def lazy_import_nodes(module: str, tree: ast.Module) -> set[int]:
    """ids of the import statements inside ``module``'s lazy ``__getattr__`` (``LAZY_FACADE``)."""
    if module not in LAZY_FACADE:
        return set()
    name = LAZY_FACADE[module][0]
    return {
        id(node)
        for fn in tree.body
        if isinstance(fn, ast.FunctionDef) and fn.name == name
        for node in ast.walk(fn)
        if isinstance(node, (ast.Import, ast.ImportFrom))
    }


def import_graph(lazy: set[tuple[str, str]] | None = None) -> dict[str, set[str]]:
    """module -> the project modules it imports (the longest importable prefix of each name).

    The ``LAZY_FACADE`` edges are left out, and added to ``lazy`` when given."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in modules:
                return ".".join(parts[:i])
        return None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lazy_nodes = lazy_import_nodes(module, tree)
        for node in ast.walk(tree):
            found: set[str] = set()
            if isinstance(node, ast.Import):
                found = {t for a in node.names if (t := resolve(a.name))}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, level - 1 further up
                    base = module.split(".")
                    if path.name != "__init__.py":
                        base = base[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                for alias in node.names:  # `from pkg import submodule` imports the submodule
                    if target := resolve(f"{name}.{alias.name}") or resolve(name):
                        found.add(target)
            if id(node) in lazy_nodes:
                allowed = found & LAZY_FACADE[module][1]
                found -= allowed
                if lazy is not None:
                    lazy |= {(module, t) for t in allowed}
            targets |= found
        targets.discard(module)
        graph[module] = targets
    return graph


def upward(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            lm, lt = layer(module), layer(target)
            sideways = lm == lt == 1 and group(module) != group(target)
            if lt > lm or sideways:
                bad.append(f"{module} -> {target}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_imports_only_point_down():
    assert upward(import_graph()) == []


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_lazy_api_facade_is_the_only_exception():
    lazy: set[tuple[str, str]] = set()
    import_graph(lazy)
    assert lazy == {("msaflow", "msaflow.api")}
    source = (
        "from msaflow import api\n"  # at import time: counts
        "def helper():\n    from msaflow import api\n"  # another function: counts
        "def __getattr__(name):\n    from msaflow import api\n    return api\n"
    )
    tree = ast.parse(source)
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert [id(n) in lazy_import_nodes("msaflow", tree) for n in imports] == [False, False, True]
    assert lazy_import_nodes("msaflow.cli", tree) == set(), "only the package root"


def test_the_checks_catch_what_they_look_for():
    graph = {
        "msaflow.models.x": {"msaflow.tasks.y"},  # up
        "msaflow.tasks.y": {"msaflow.models.x"},
        "msaflow.feature_store.a": {"msaflow.models.x"},  # sideways
        "msaflow.flows.f": {"msaflow.tasks.y", "msaflow.settings"},  # down, and to the ground
        "msaflow.api": {"msaflow.flows.f"},  # the entry points: down
        "msaflow.errors": {"msaflow.cli"},  # the ground floor: up
    }
    assert upward(graph) == [
        "msaflow.errors -> msaflow.cli",
        "msaflow.feature_store.a -> msaflow.models.x",
        "msaflow.models.x -> msaflow.tasks.y",
    ]
    assert cycles(graph) == [["msaflow.models.x", "msaflow.tasks.y"]]


def test_the_graph_names_modules_as_imported():
    graph = import_graph()
    names = {"msaflow", "msaflow.cli", "msaflow.models.mmafnet", "msaflow.tasks.tuning.space"}
    assert names <= set(graph)
    assert "msaflow.models.base" in graph["msaflow.models.mmafnet"]
    assert not [m for m in graph if m.split(".")[0] != "msaflow"], "every module is msaflow.*"
