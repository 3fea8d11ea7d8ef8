"""Promises the documentation (docs/) makes that no other test checked, each by its effect.

Server flags run through `gradserve serve` as an operator starts it; the SDK's through a
real server. Each test fails when the promised behaviour is removed.
"""

import logging
import math
import os
import subprocess
import sys
from concurrent import futures

import grpc
import numpy as np
import pytest
from certs import make_certificates
from graphs import GraphBuilder
from hardening import SlowOp, violations, wait_until
from servers import GRADSERVE, Served
from test_registry import install_fake_plugin

import gradserve.client
from bench.ports import free_localhost_address
from gradserve.client import (
    Client,
    DeadlineExceeded,
    ServerError,
    ServerUnavailable,
    Value,
    connect,
)
from gradserve.client.security import channel_credentials
from gradserve.server.service.app import running_server
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

# --- numbers --------------------------------------------------------------------------


@pytest.mark.parametrize("leaves", [2, 200])  # the small-call path and the array path
def test_a_nan_or_infinite_seed_is_refused(stub, leaves):
    g = GraphBuilder()
    for j in range(leaves):
        g.leaf(0.5 + j)
    total = g.op("sum", *range(leaves))
    for seed in (math.nan, math.inf):
        request = pb.EvaluateRequest(graph=g.proto(), outputs=[total], seeds=[seed])
        with pytest.raises(grpc.RpcError) as caught:
            stub.Evaluate(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The error names the seeded node, where the non-finite gradient starts.
        assert violations(caught.value)[0][0] == f"graph.node_ops[{total}]"
        assert "a seed is not finite" in caught.value.details()
    # allow_non_finite lets the same seed through, by IEEE rules.
    request = pb.EvaluateRequest(
        graph=g.proto(), outputs=[total], seeds=[math.inf], allow_non_finite=True
    )
    assert list(stub.Evaluate(request).grads) == [math.inf] * (leaves + 1)


# --- deadlines ------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_call_log_rates")
def test_a_callers_deadline_stops_the_servers_evaluation(registry, caplog):
    """The caller's deadline passes while an op runs; the server stops between op groups
    (the second slow node is never computed) and logs the call as DEADLINE_EXCEEDED."""
    slow = SlowOp(seconds=1.0)  # each call of the op takes a second: the deadline is 0.5 s
    caplog.set_level(logging.INFO)  # the per-call log lines
    with running_server(slow.registry(registry)) as server:
        y = Value(0.5).apply("slow").apply("slow")
        with Client(f"127.0.0.1:{server.port}", timeout=0.5) as client:
            with pytest.raises(DeadlineExceeded):
                y.backward(client)
            logged = wait_until(lambda: "status=DEADLINE_EXCEEDED" in caplog.text, timeout=30)
            assert logged, caplog.text
            assert slow.calls == 1
            slow.seconds = 0.0
            y.backward(client)  # the server is fine afterwards
            assert y.data == 0.5


# --- the SDK --------------------------------------------------------------------------


class _FailsAfterOneChunk(pb_grpc.GradientServiceServicer):
    """Forwards EvaluateStream to a real server, then fails after the first chunk."""

    def __init__(self, upstream: pb_grpc.GradientServiceStub) -> None:
        self.upstream = upstream

    def EvaluateStream(self, request, context):
        for chunk in self.upstream.EvaluateStream(request):
            yield chunk
            context.abort(grpc.StatusCode.INTERNAL, "failed after one chunk")


def test_a_backward_that_fails_midway_changes_no_value(stub, target):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GradientServiceServicer_to_server(_FailsAfterOneChunk(stub), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        x, c = Value(1.0), Value(0.5)
        x.grad, c.grad = 7.0, 8.0  # as left by an earlier step
        nodes = [x]
        for _ in range(70_000):  # more than one chunk of results: backward streams
            nodes.append(nodes[-1] + c)
        gradserve.client.use(target)  # reading .data evaluates the pending nodes there
        try:
            before = [(v.data, v.grad) for v in nodes]
        finally:
            gradserve.client.use(None)
        # A 1 MiB message limit: a reply of 70,001 nodes does not fit, so backward streams.
        with (
            Client(f"127.0.0.1:{port}", max_message_bytes=2**20) as client,
            pytest.raises(ServerError, match="failed after one chunk"),
        ):
            nodes[-1].backward(client)
        assert [(v.data, v.grad) for v in nodes] == before
        assert (c.data, c.grad) == (0.5, 8.0)
    finally:
        server.stop(0)


def _stream_progress_output(client, capsys, monkeypatch, nodes: int) -> str:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal
    x = Value(1.0)
    y = x
    for _ in range(nodes - 1):
        y = y + 1.0
    list(client.stream(y, wrt="all"))
    return capsys.readouterr().err


def test_a_progress_bar_shows_by_itself_above_100_000_nodes(target, capsys, monkeypatch):
    """On a terminal, client.stream draws a bar over results of 100,000 nodes and more
    (each `y + 1.0` adds a constant leaf and a node), and none below."""
    with Client(target) as client:
        assert "node/s" in _stream_progress_output(client, capsys, monkeypatch, 50_001)
        assert _stream_progress_output(client, capsys, monkeypatch, 49_999) == ""


def test_a_million_node_backward_through_the_server(target):
    """y = x + c + c + ... (999,999 additions): dy/dx = 1, dy/dc = 999,999, all exact."""
    x, c = Value(0.5), Value(0.25)
    y = x
    for _ in range(999_999):
        y = y + c
    with Client(target, timeout=120) as client:
        y.backward(client)
    assert y.data == 0.5 + 0.25 * 999_999
    assert (x.grad, c.grad) == (1.0, 999_999.0)


# --- server flags ---------------------------------------------------------------------

PID_OP = """
    import os
    import numpy as np
    from gradserve.ops import Op

    pid = Op("pid", 1, forward=lambda x: np.full_like(x, os.getpid()),
             backward=lambda g, y, x: (np.zeros_like(g),))
"""


@pytest.fixture(scope="module")
def pid_plugin(tmp_path_factory):
    """An environment with an untrusted plugin whose op returns the process id it runs in."""
    root = tmp_path_factory.mktemp("pid")
    install_fake_plugin(root, "pid-plugin", "pid", PID_OP, {"pid": "pid"})
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }


def _pid_seen(port: int) -> float:
    g = GraphBuilder()
    g.op("pid", g.leaf(0.0))
    channel, stub = connect(f"127.0.0.1:{port}")
    with channel:
        return stub.Evaluate(pb.EvaluateRequest(graph=g.proto()), timeout=60).values[-1]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_isolation_workers_zero_runs_untrusted_ops_in_process(pid_plugin, workers):
    flags = ("--workers", "1", "--isolation-workers", workers)
    with Served(*flags, env=pid_plugin) as served:
        in_server = _pid_seen(served.port) == served.process.pid
    assert in_server == (workers == "0")


def test_max_message_mb_limits_replies_and_the_stream_carries_them(stub):
    """A small request whose reply is larger than --max-message-mb: Evaluate is refused,
    EvaluateStream in chunks under the limit delivers it."""
    g = GraphBuilder()
    node = g.leaf(0.0)
    for _ in range(20_000):
        node = g.op("neg", node)
    g.leaf_values = [0.5, -0.5, 1.5, 2.5, 3.5]
    request = pb.EvaluateRequest(graph=g.proto(), rows=5)  # reply: 20,001 x 5 x 2 doubles
    assert request.ByteSize() < 2**20 < 2 * 20_001 * 5 * 8
    with Served("--workers", "1", "--max-message-mb", "1") as served:
        channel, limited = connect(f"127.0.0.1:{served.port}", max_message_bytes=2**24)
        with channel:
            with pytest.raises(grpc.RpcError) as caught:
                limited.Evaluate(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            request.chunk_size = 5_000
            chunks = list(limited.EvaluateStream(request, timeout=30))
    assert sum(len(c.node_ids) for c in chunks) == 20_001
    # Chunks lay out their rows row by row, as the whole reply does.
    streamed = np.concatenate([np.reshape(c.values, (5, -1)) for c in chunks], axis=1)
    whole = np.reshape(stub.Evaluate(request).values, (5, -1))  # the session server's limit
    np.testing.assert_array_equal(streamed, whole)
    np.testing.assert_array_equal(whole[:, -1], [0.5, -0.5, 1.5, 2.5, 3.5])  # an even chain


BROKEN_PLUGIN = "raise ImportError('this plugin is broken on purpose')"


def test_strict_plugins_stops_start_up_on_a_broken_plugin(tmp_path):
    install_fake_plugin(tmp_path, "broken-plugin", "broken", BROKEN_PLUGIN, {"broken": "x"})
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    strict = subprocess.run(
        [GRADSERVE, "serve", "--port", "0", "--workers", "1", "--strict-plugins"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert strict.returncode != 0
    assert "broken on purpose" in strict.stderr and "Traceback" not in strict.stderr
    # Without the flag the same plugin is logged and skipped, and the server serves.
    with Served("--workers", "1", env=env) as served:
        assert "broken on purpose" in served.log
        channel, plain = connect(f"127.0.0.1:{served.port}")
        with channel:
            names = {op.name for op in plain.ListOps(pb.ListOpsRequest(), timeout=10).ops}
    assert "broken" not in names and "tanh" in names


# --- TLS flags ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _probe(port: int, *flags: str) -> int:
    command = [GRADSERVE, "health", "--target", f"127.0.0.1:{port}", "--timeout", "5", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=60).returncode


def test_tls_client_ca_and_the_probes_tls_flags(certs):
    """`serve --tls-client-ca` lets only clients with a certificate from that CA through;
    the probe presents one with --tls-cert/--tls-key and checks the server's name against
    --tls-server-name (the certificate names localhost and 127.0.0.1)."""
    server_flags = ("--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key))
    with Served(*server_flags, "--tls-client-ca", str(certs.ca), "--workers", "1") as served:
        ca = ("--tls-ca", str(certs.ca))
        mine = ("--tls-cert", str(certs.client.cert), "--tls-key", str(certs.client.key))
        stranger = ("--tls-cert", str(certs.stranger.cert), "--tls-key", str(certs.stranger.key))
        assert _probe(served.port, *ca, *mine) == 0
        assert _probe(served.port, *ca, *mine, "--tls-server-name", "localhost") == 0
        assert _probe(served.port, *ca, *mine, "--tls-server-name", "elsewhere.test") == 1
        assert _probe(served.port, *ca) == 1  # no client certificate
        assert _probe(served.port, *ca, *stranger) == 1  # one from another CA
        assert _probe(served.port) == 1  # plaintext
        good = channel_credentials(
            ca_file=certs.ca, cert_file=certs.client.cert, key_file=certs.client.key
        )
        with Client(f"localhost:{served.port}", credentials=good, timeout=10) as client:
            assert "tanh" in {op.name for op in client.ops()}


def test_sdk_credentials_make_a_tls_channel(registry, certs):
    """Against a server that speaks only TLS, the SDK's client works with credentials (so
    it made a TLS channel) and fails without them."""
    from gradserve.server.service.security import server_credentials

    tls = server_credentials(str(certs.server.cert), str(certs.server.key))
    with running_server(registry, credentials=tls, address=free_localhost_address()) as server:
        target = f"localhost:{server.port}"
        with Client(target, credentials=channel_credentials(ca_file=certs.ca), timeout=10) as c:
            y = Value(0.3).tanh()
            y.backward(c)
            assert y.data == pytest.approx(np.tanh(0.3), rel=1e-15)
        with Client(target, timeout=10) as plain, pytest.raises(ServerUnavailable):
            plain.ops()
