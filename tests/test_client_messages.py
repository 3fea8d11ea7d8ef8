"""The Python, Node.js and Go clients say the same one line for each way a call fails to get
through (issue 21, point 4): each client makes the same calls against the same real
servers, and their messages are compared word for word."""

import json
import os
import subprocess

import pytest
from message_cases import message_cases, python_message
from system_tools import require_tool
from test_go_client import GO_CLIENT, go
from test_node_client import NODE_CLIENT


@pytest.fixture(scope="module")
def cases(registry, tmp_path_factory):
    with message_cases(registry, tmp_path_factory.mktemp("certs")) as found:
        yield found


def _node(cases) -> dict:
    require_tool("node", "npm")
    if not (NODE_CLIENT / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True)
    result = subprocess.run(
        ["node", "testing/messages.js"],
        cwd=NODE_CLIENT,
        env={**os.environ, "GRADSERVE_MESSAGE_CASES": json.dumps(cases)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return {name: (message, auth) for name, message, auth in lines}


def _go(cases) -> dict:
    require_tool("go")
    result = go(
        *("test", "-count=1", "-v", "-tags", "messages", "-run", "^TestMessages$", "./gradserve"),
        cwd=GO_CLIENT,
        env={"GRADSERVE_MESSAGE_CASES": json.dumps(cases)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = {}
    for line in result.stdout.splitlines():
        if line.startswith("MESSAGE "):
            name, message, auth, error = json.loads(line.removeprefix("MESSAGE "))
            assert error == f"gradserve: {message}"  # Go's error string: the package, then it
            found[name] = (message, auth)
    return found


def test_python_node_and_go_say_the_same(cases):
    python = {case["name"]: python_message(case) for case in cases}
    assert python["nothing listens"][0].startswith("no gradserve server answers at localhost:")
    assert python["no client certificate"][1] and python["foreign client certificate"][1]
    assert python["timeout"][0].startswith("the call took longer than its timeout of 0.001 s")
    # A message of its own for each case, but for the two refused client certificates.
    assert len(set(python.values())) == len(cases) - 1
    node, go_ = _node(cases), _go(cases)
    for case in cases:
        name = case["name"]
        assert node[name] == python[name], f"Node.js, {name}"
        assert go_[name] == python[name], f"Go, {name}"
        assert "Resolution note" not in node[name][0]
