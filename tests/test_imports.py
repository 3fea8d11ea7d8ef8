"""The import structure of the Python packages: no module imports another's private names,
and no imports go in a circle (DESIGN.md 6a), counting imports inside functions too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "ops_plugins/core": "gradserve",
    "ops_plugins/special": "gradserve_ops_special",
    "server": "gradserve",
    "client": "gradserve",
    "protos": "gradserve",
}


def modules() -> dict[str, Path]:
    """Every module of the workspace's distributions by its dotted name."""
    found = {}
    for folder, top in SOURCES.items():
        for path in (ROOT / folder / top).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> list[tuple[str, str]]:
    """(module, name) for each name imported from a workspace module; name "" for a
    module imported whole."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom) and node.module in known:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in known:
                    found.append((submodule, ""))
                else:
                    found.append((node.module, alias.name))
    return found


def test_no_module_imports_another_modules_private_names():
    known = modules()
    private = []
    for name, path in known.items():
        for module, imported in imports_of(path, known):
            last = module.rsplit(".", 1)[-1]
            if last.startswith("_") or (imported.startswith("_") and imported != "__version__"):
                private.append(f"{name} imports {module} {imported}".strip())
    assert private == []


def test_no_imports_go_in_a_circle_in_the_server_ops_and_protos():
    """(The SDK's Value, default client and Client still import each other inside
    functions: left to the SDK's own refactoring.)"""
    known = modules()
    graph = {
        name: {m for m, _ in imports_of(path, known) if m != name}
        for name, path in known.items()
        if not name.startswith("gradserve.client")
    }
    cyclic = []
    for start in sorted(graph):  # whether start reaches itself, by a walk with a stack
        seen, stack = set(), list(graph[start])
        while stack:
            name = stack.pop()
            if name == start:
                cyclic.append(start)
                break
            if name not in seen:
                seen.add(name)
                stack.extend(graph.get(name, ()))
    assert cyclic == []


SERVICE = ROOT / "server" / "gradserve" / "server" / "service"
# What the gRPC edge may take from the engine (DESIGN.md 6a: the service names no engine
# path): its one entry and what that entry speaks in, the plan cache (which knows nothing of
# paths), errors, request defaults and memory estimates. None: any name of the module.
ENGINE_NAMES_FOR_THE_SERVICE = {
    "gradserve.server.engine.run": {"Engine", "Inputs", "Answer", "Cost"},
    "gradserve.server.engine.plan": {"GraphArrays", "Plan", "raise_if_stopped"},
    "gradserve.server.engine.plan_cache": None,
    "gradserve.server.engine.errors": None,
    "gradserve.server.engine.requests": None,
    "gradserve.server.engine.memory": None,
}
# A plan's attributes that decide or carry an evaluation path.
PATH_ATTRIBUTES = {"isolated", "source", "steps", "kept", "scalars"}


def engine_paths_named(path: Path, known: dict[str, Path]) -> list[str]:
    """The engine names ``path`` imports beyond those above, and the path-choosing plan
    attributes it reads."""
    named = []
    for module, name in imports_of(path, known):
        if module.startswith("gradserve.server.engine"):
            allowed = ENGINE_NAMES_FOR_THE_SERVICE.get(module, set())
            if allowed is not None and name not in allowed:
                named.append(f"{path.name} imports {module} {name}".strip())
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in PATH_ATTRIBUTES:
            named.append(f"{path.name}:{node.lineno} reads .{node.attr}")
    return named


def test_the_service_names_no_engine_path():
    """The service imports from the engine only the names above, never a path's module
    (floats, compiled programs, chains, second order, the choice of isolation), and reads
    no plan attribute that chooses a path: which path runs is the engine's decision."""
    known = modules()
    named = [
        found for path in sorted(SERVICE.glob("*.py")) for found in engine_paths_named(path, known)
    ]
    assert named == []


def test_the_path_check_finds_a_service_that_picks_a_path(tmp_path):
    planted = tmp_path / "picker.py"
    planted.write_text(
        "from gradserve.server.engine import memory, small_call\n"
        "from gradserve.server.engine.run import Engine, run\n"
        "def pick(plan):\n"
        "    return plan.isolated\n"
    )
    assert engine_paths_named(planted, modules()) == [
        "picker.py imports gradserve.server.engine.small_call",
        "picker.py imports gradserve.server.engine.run run",
        "picker.py:4 reads .isolated",
    ]
