"""Every way a call can fail reaches the user as one line that says what to do (issue 21,
point 4): no gRPC traceback, no C-core log line, against real servers started here."""

import os
import subprocess
import sys
import textwrap

import grpc
import pytest
from certs import make_certificates
from hardening import SlowOp

from bench.ports import free_localhost_address
from gradserve.client import (
    AuthError,
    Client,
    DeadlineExceeded,
    GradserveError,
    ResourceExhausted,
    ServerUnavailable,
    Value,
)
from gradserve.client.channel import target_or_default
from gradserve.client.security import channel_credentials
from gradserve.server.engine.plan_cache import BUDGET_SHARE
from gradserve.server.service.app import ARRIVING_SHARE, running_server
from gradserve.server.service.limits import Limits
from gradserve.server.service.security import server_credentials


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_port(registry, certs):
    tls = server_credentials(str(certs.server.cert), str(certs.server.key))
    with running_server(registry, credentials=tls, address=free_localhost_address()) as server:
        yield server.port


@pytest.fixture(scope="module")
def mtls_port(registry, certs):
    mtls = server_credentials(str(certs.server.cert), str(certs.server.key), str(certs.ca))
    with running_server(registry, credentials=mtls, address=free_localhost_address()) as server:
        yield server.port


@pytest.fixture(scope="module")
def plaintext_port(registry):
    with running_server(registry, address=free_localhost_address()) as server:
        yield server.port


def _failure(target: str, credentials=None, **options) -> GradserveError:
    """The error of one call (ListOps) on a fresh client."""
    with (
        Client(target, credentials=credentials, **options) as client,
        pytest.raises(GradserveError) as caught,
    ):
        client.ops()
    return caught.value


def _one_line(error: GradserveError) -> str:
    """The message, checked to be one line with no gRPC error chained to it."""
    text = str(error)
    assert "\n" not in text and error.__cause__ is None and error.__suppress_context__
    return text


def test_without_a_target_the_client_reads_gradserve_target(monkeypatch, unused_target):
    monkeypatch.setenv("GRADSERVE_TARGET", unused_target)
    assert f"answers at {unused_target}:" in str(_failure(None))
    monkeypatch.delenv("GRADSERVE_TARGET")
    assert target_or_default(None) == "localhost:50051"  # (a server may listen there)
    assert target_or_default("h:1") == "h:1"


def test_nothing_at_the_target_says_to_start_a_server(unused_target):
    error = _failure(unused_target)
    assert isinstance(error, ServerUnavailable) and isinstance(error, ConnectionError)
    assert _one_line(error) == (
        f"no gradserve server answers at {unused_target}: start one with `gradserve serve`, "
        "or set GRADSERVE_TARGET"
    )


def test_a_name_that_does_not_resolve_is_nothing_at_the_target():
    error = _failure("no-such-host.invalid:50051", timeout=20)
    assert isinstance(error, ServerUnavailable)
    assert _one_line(error).startswith("no gradserve server answers at no-such-host.invalid:50051")


def test_a_plaintext_client_on_a_tls_port_is_told_to_use_tls(tls_port):
    error = _failure(f"localhost:{tls_port}")
    assert isinstance(error, ServerUnavailable)
    assert _one_line(error) == (
        f"the server at localhost:{tls_port} expects TLS and this client connects in "
        "plaintext: give the client the CA certificate that signed the server's"
    )


def test_a_tls_client_on_a_plaintext_port_is_told_to_drop_tls(plaintext_port, certs):
    error = _failure(f"localhost:{plaintext_port}", channel_credentials(ca_file=certs.ca))
    assert isinstance(error, ServerUnavailable)
    assert _one_line(error) == (
        f"the server at localhost:{plaintext_port} speaks plaintext and this client connects "
        "with TLS: connect without TLS, or start the server with --tls-cert and --tls-key"
    )


def test_a_server_certificate_the_client_does_not_trust_says_which_ca_to_pass(tls_port):
    error = _failure(f"localhost:{tls_port}", channel_credentials())  # the system's roots
    assert isinstance(error, ServerUnavailable)
    assert "presented a certificate this client does not trust" in _one_line(error)


@pytest.mark.parametrize("identity", ["none", "stranger"])
def test_a_missing_or_foreign_client_certificate_is_an_auth_error(mtls_port, certs, identity):
    pair = {"none": None, "stranger": certs.stranger}[identity]
    credentials = channel_credentials(
        ca_file=certs.ca,
        cert_file=pair.cert if pair else None,
        key_file=pair.key if pair else None,
    )
    error = _failure(f"localhost:{mtls_port}", credentials)
    assert isinstance(error, AuthError) and isinstance(error, PermissionError)
    assert _one_line(error).startswith(
        f"the server at localhost:{mtls_port} refused the TLS connection: it requires a "
        "client certificate signed by a CA it trusts"
    )


def test_the_right_client_certificate_still_gets_through(mtls_port, certs):
    credentials = channel_credentials(
        ca_file=certs.ca, cert_file=certs.client.cert, key_file=certs.client.key
    )
    with Client(f"localhost:{mtls_port}", credentials=credentials, timeout=20) as client:
        assert "add" in [op.name for op in client.ops()]


def _long_chain() -> Value:
    y = Value(0.5)
    for _ in range(2000):
        y = y.tanh()
    return y


def test_a_deadline_names_the_clients_timeout(target):
    with Client(target, timeout=1e-6) as client, pytest.raises(DeadlineExceeded) as caught:
        _long_chain().backward(client)
    error = caught.value
    assert error.timeout == 1e-6 and isinstance(error, TimeoutError)
    assert "Deadline Exceeded" not in _one_line(error)
    assert _one_line(error) == (
        "the call took longer than its timeout of 1e-06 s: pass a larger timeout, "
        "or send a smaller graph"
    )


def test_a_deadline_names_the_calls_own_timeout(target):
    x = Value(0.3)
    with Client(target, timeout=60) as client, pytest.raises(DeadlineExceeded) as caught:
        client.hessian(_long_chain() * x, [x], timeout=2e-6)
    assert "timeout of 2e-06 s" in _one_line(caught.value)


def test_the_servers_default_deadline_is_reported_in_its_words(registry):
    slow = SlowOp(seconds=5)
    limits = Limits(default_deadline_s=0.2)
    with (
        running_server(slow.registry(registry), limits=limits) as server,
        Client(f"127.0.0.1:{server.port}") as client,
        pytest.raises(DeadlineExceeded) as caught,
    ):
        Value(1.0).apply("slow").backward(client)
    slow.release.set()
    assert caught.value.timeout is None
    assert _one_line(caught.value).startswith("the call passed the server's deadline: ")


def test_over_the_memory_budget_is_resource_exhausted_with_estimate_and_limit(registry):
    budget = 1 << 20  # 1 MiB
    x = Value(0.5)
    y = x
    for _ in range(50_000):  # 50,001 nodes: several MiB of arrays
        y = y * 1.0001
    with (
        running_server(registry, max_memory_bytes=budget) as server,
        Client(f"127.0.0.1:{server.port}") as client,
        pytest.raises(ResourceExhausted) as caught,
    ):
        y.backward(client)
    error = caught.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The limit is the budget for calls: the memory budget less the plan cache's share.
    calls_budget = budget - budget // BUDGET_SHARE - budget // ARRIVING_SHARE
    assert (error.subject, error.limit) == ("max-memory-mb", calls_budget)
    assert error.estimate > calls_budget
    text = _one_line(error)
    assert "max-memory-mb = 1" in text and text.endswith("a larger --max-memory-mb")


def test_a_request_over_a_size_limit_is_resource_exhausted_naming_the_field(registry):
    with (
        running_server(registry, limits=Limits(max_fan_in=2)) as server,
        Client(f"127.0.0.1:{server.port}") as client,
        pytest.raises(ResourceExhausted) as caught,
    ):
        Value(1.0).apply("sum", 2.0, 3.0).backward(client)
    assert caught.value.subject.startswith("graph.input_counts")
    assert (caught.value.estimate, caught.value.limit) == (None, None)
    assert "max-fan-in = 2" in _one_line(caught.value)


_TLS_ON_PLAINTEXT = textwrap.dedent(
    """
    import sys
    from gradserve.client import Client, GradserveError
    from gradserve.client.security import channel_credentials

    credentials = channel_credentials(ca_file=sys.argv[2])
    with Client(sys.argv[1], credentials=credentials, timeout=20) as client:
        try:
            client.ops()
        except GradserveError as error:
            print(error)
    """
)


def _run_client(target: str, ca, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _TLS_ON_PLAINTEXT, target, str(ca)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_no_c_core_line_reaches_stderr_unless_the_user_asks(plaintext_port, certs):
    """A failed TLS handshake makes C-core log to stderr; the SDK keeps it quiet by default,
    and a GRPC_VERBOSITY the user set wins."""
    target = f"localhost:{plaintext_port}"
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    quiet = _run_client(target, certs.ca, env)
    assert quiet.stdout.startswith(f"the server at {target} speaks plaintext")
    assert quiet.stderr == ""
    asked = _run_client(target, certs.ca, {**env, "GRPC_VERBOSITY": "INFO"})
    assert asked.stdout == quiet.stdout
    assert "Handshake failed" in asked.stderr  # the line the default keeps away
