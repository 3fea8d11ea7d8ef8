import socket

import grpc
import pytest
from conformance_suite import conformance_server, runner_env, tls_servers
from system_tools import STRICT, require_tool

from gradserve.server.registry import discovered_entry_points, load_registry
from gradserve.server.service.app import running_server
from gradserve.server.service.calls import call_log
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


def pytest_addoption(parser):
    parser.addoption(
        "--require-tools",
        action="store_true",
        help="fail, rather than skip, tests whose system tool is missing (tests/system_tools.py)",
    )


def pytest_configure(config):
    STRICT["value"] = config.getoption("--require-tools")
    config.addinivalue_line(
        "markers", "requires_tool(*names): needs these programs on the PATH (system_tools.py)"
    )


def pytest_runtest_setup(item):
    for marker in item.iter_markers("requires_tool"):
        require_tool(*marker.args)


@pytest.fixture
def fresh_call_log_rates(monkeypatch):
    """The test starts with no failure counted this second in the call log that every
    server of the test process shares (``logs.CallLog``: failed calls of one method and
    status are logged 100 a second, the rest only counted). Without it, a flood from an
    earlier test of the run (a rapid reset's cancels) could have used up the second's lines
    for the very status a test looks for, which then reached the log only as a count (seen
    once in CI). For every test that reads a failed call's line."""
    monkeypatch.setattr(call_log, "_failures", {})


@pytest.fixture(scope="session")
def registry():
    return load_registry()


@pytest.fixture(scope="session")
def ops(registry):
    return {name: loaded.op for name, loaded in registry.items()}


@pytest.fixture(scope="session")
def server(registry):
    with running_server(registry) as running:
        yield running


@pytest.fixture(scope="session")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(channel):
    return pb_grpc.GradientServiceStub(channel)


@pytest.fixture
def fresh_entry_points():
    """Forget the cached entry points before and after a test that changes sys.path."""
    discovered_entry_points.cache_clear()
    yield
    discovered_entry_points.cache_clear()


@pytest.fixture(scope="session")
def target(server):
    """The address of the session server, for SDK clients."""
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def unused_target():
    """An address where no server listens (a port that was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def conformance_target():
    """The conformance suite's server (tests/conformance_suite.py), shared by every runner:
    its "host:port" target and bearer token."""
    with conformance_server() as (target, token):
        yield target, token


@pytest.fixture(scope="session")
def client_test_env(conformance_target, tmp_path_factory):
    """What the Go and Node clients' tests read: the conformance server, the cases, and a
    TLS and a mutual-TLS server (tests/conformance_suite.py), as environment variables."""
    with tls_servers(tmp_path_factory.mktemp("certs")) as tls:
        yield {**runner_env(*conformance_target), **tls}
