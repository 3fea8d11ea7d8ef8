"""The SDK's modules import one another one way: no cycle, counting imports made inside
functions (which hide a cycle at run time but not from a reader)."""

import ast
from pathlib import Path

SDK = Path(__file__).resolve().parents[1] / "client" / "gradserve" / "client"


def imports_of(path: Path) -> set[str]:
    """The SDK modules that the module at ``path`` imports, anywhere in it but in an ``if
    TYPE_CHECKING:`` block (imports for type checkers only, which never run)."""
    found = set()
    tree = ast.parse(path.read_text())
    for block in ast.walk(tree):
        if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING"):
            block.body = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
            "gradserve.client"
        ):
            continue
        if node.module == "gradserve.client":  # from gradserve.client import a, b
            found |= {alias.name for alias in node.names if (SDK / f"{alias.name}.py").exists()}
        else:
            found.add(node.module.split(".")[2])
    return found - {path.stem}


def a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph``, or None: a depth-first search with an explicit stack."""
    state = dict.fromkeys(graph, "new")
    for start in graph:
        if state[start] != "new":
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = "open"
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = "done"
                stack.pop()
            elif state.get(following) == "open":
                return [*path[path.index(following) :], following]
            elif state.get(following) == "new":
                state[following] = "open"
                path.append(following)
                stack.append(iter(sorted(graph[following])))
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert a_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_sdk_s_imports_have_no_cycle():
    graph = {path.stem: imports_of(path) for path in SDK.glob("*.py") if path.stem != "__init__"}
    assert "tape" in graph["value"] and "remote" in graph["value"]  # the graph is really read
    assert a_cycle(graph) is None


def test_a_value_imports_no_client_layer():
    """value.py reaches the client layer only through what it installed in ``remote`` (and
    the optional drawing module, which needs Values only as a type)."""
    allowed = {"opcodes", "remote", "errors", "recording", "tape", "draw"}
    assert imports_of(SDK / "value.py") <= allowed
