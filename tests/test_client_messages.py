"""The Python, Node.js and Go clients say the same one line for each way a call fails to get
through (issue 21, point 4): each client makes the same calls against the same real
servers, and their messages are compared word for word."""

import json
import os
import subprocess

import pytest
from certs import make_certificates
from system_tools import require_tool
from test_go_client import GO_CLIENT, go
from test_node_client import NODE_CLIENT

from gradserve.client import AuthError, Client, GradserveError, Value
from gradserve.client.security import channel_credentials
from gradserve.server.service.app import running_server
from gradserve.server.service.security import server_credentials

CHAIN = 200_000  # tanh nodes: far more than a millisecond of work for any client


@pytest.fixture(scope="module")
def cases(registry, tmp_path_factory):
    """Each case: where to call, with what, and how (ListOps, or a backward on a chain)."""
    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    tls = server_credentials(str(certs.server.cert), str(certs.server.key))
    mtls = server_credentials(str(certs.server.cert), str(certs.server.key), str(certs.ca))
    with (
        running_server(registry, address="localhost:0") as plain,
        running_server(registry, credentials=tls, address="localhost:0") as secure,
        running_server(registry, credentials=mtls, address="localhost:0") as mutual,
    ):
        stopped = running_server(registry, address="localhost:0")
        with stopped as gone:
            nothing = f"localhost:{gone.port}"
        ca, stranger = str(certs.ca), certs.stranger

        def case(name, target, tls=False, ca="", cert="", key="", timeout_s=30.0, chain=0):
            return dict(locals())

        yield [
            case("nothing listens", nothing),
            case("plaintext client, TLS server", f"localhost:{secure.port}"),
            case("TLS client, plaintext server", f"localhost:{plain.port}", True, ca),
            case("server not trusted", f"localhost:{secure.port}", True),
            case("no client certificate", f"localhost:{mutual.port}", True, ca),
            case(
                "foreign client certificate",
                f"localhost:{mutual.port}",
                True,
                ca,
                str(stranger.cert),
                str(stranger.key),
            ),
            case("timeout", f"localhost:{plain.port}", timeout_s=0.001, chain=CHAIN),
        ]


def _python(case) -> tuple[str, bool]:
    credentials = None
    if case["tls"]:
        credentials = channel_credentials(
            ca_file=case["ca"] or None, cert_file=case["cert"] or None, key_file=case["key"] or None
        )
    with Client(case["target"], credentials=credentials, timeout=case["timeout_s"]) as client:
        try:
            if case["chain"]:
                y = Value(0.5)
                for _ in range(case["chain"]):
                    y = y.tanh()
                y.backward(client)
            else:
                client.ops()
        except GradserveError as error:
            return str(error), isinstance(error, AuthError)
    pytest.fail(f"{case['name']}: the call succeeded")


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
    python = {case["name"]: _python(case) for case in cases}
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
