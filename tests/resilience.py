"""Helpers for the resilience tests (issue 11): a `gradserve serve` subprocess set up as an
attacker would find it, abusive clients, and readings of the server's memory, CPU and log.

Settings the server gained for resilience (``--max-memory-mb``, ``--send-timeout``) are
passed as their GRADSERVE_ environment variables, which every option also reads: a server
without them then still starts, and a test fails on the behaviour it checks rather than on
an unknown flag.
"""

import os
import re
import threading
import time
from datetime import datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from graphs import GraphBuilder
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hardening import chain
from servers import Served
from test_registry import install_fake_plugin

from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

SERVICE = "/gradserve.v1.GradientService/"
EVALUATE = SERVICE + "Evaluate"
EVALUATE_STREAM = SERVICE + "EvaluateStream"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
TOKEN = "resilience-token-0123456789"
AUTHORISED = (("authorization", f"Bearer {TOKEN}"),)
MESSAGE_LIMIT = 64 * 2**20  # the server's default --max-message-mb
MARGIN_MIB = 200  # what a server may use beyond its idle memory and its budget
HANG_S = 10  # a call or probe that takes longer than this is taken to hang

CALL_LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \d+ INFO \S+: "
    r"(?P<method>\w+) nodes=(?P<nodes>\d+) status=(?P<status>\w+) (?P<ms>[\d.]+) ms$",
    re.MULTILINE,
)


def serve(
    *flags: str, workers: int = 1, settings: dict | None = None, env: dict | None = None
) -> Served:
    """`gradserve serve --workers N FLAGS` with ``settings`` ({"send-timeout": 2, ...}) as
    GRADSERVE_ environment variables, once every worker serves (with several, the parent
    says "serving on" before they bind the port; each says "worker serving")."""
    environment = {**os.environ, **(env or {})}
    for name, value in (settings or {}).items():
        environment["GRADSERVE_" + name.upper().replace("-", "_")] = str(value)
    served = Served("--workers", str(workers), *flags, env=environment)
    if workers > 1:
        served.wait_for("(?s)" + ".*".join(["worker serving"] * workers))
    return served


def token_file(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return str(path)


def channel_to(port: int, *, own_connection: int | None = None) -> grpc.Channel:
    """A channel with unlimited message sizes. ``own_connection`` (any distinct number)
    gives the channel a connection of its own instead of sharing one with like channels,
    so that with several workers the kernel spreads the connections over them."""
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    if own_connection is not None:
        options += [("grpc.use_local_subchannel_pool", 1), ("gradserve.test.conn", own_connection)]
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=options)


def stub_on(channel: grpc.Channel) -> pb_grpc.GradientServiceStub:
    return pb_grpc.GradientServiceStub(channel)


def health_status(channel: grpc.Channel, timeout: float = HANG_S) -> str:
    """The whole server's health status name; raises grpc.RpcError if it does not answer."""
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=timeout
    )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def rpc_code(call) -> grpc.StatusCode:
    """The status code ``call()`` ends with (OK if it returns)."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


# Graphs ----------------------------------------------------------------------------------


def chain_graph(op: str, length: int, leaf_values) -> pb.Graph:
    """The same chain built straight into a protobuf (fast for millions of nodes)."""
    return pb.Graph(
        op_names=[op],
        node_ops=[0] + [1] * length,
        input_counts=[0] + [1] * length,
        input_ids=range(length),
        leaf_values=leaf_values,
    )


def check_chain_stream(stub, length: int, xs) -> None:
    """An EvaluateStream of the chain of ``length`` negations over the rows ``xs`` answers,
    right: node k is (-1)^k x and its gradient (d y_last / d y_k) is (-1)^(length - k), every
    node and row exactly once."""
    xs = np.asarray(xs, dtype=float)
    request = pb.EvaluateRequest(graph=chain_graph("neg", length, xs.tolist()), rows=len(xs))
    seen = np.zeros((length + 1, len(xs)), dtype=int)
    for chunk in stub.EvaluateStream(request, timeout=6 * HANG_S):
        ids, rows, first = np.array(chunk.node_ids), chunk.rows or len(xs), chunk.first_row
        # A chunk's results are row by row, its nodes within a row.
        values = np.array(chunk.values).reshape(rows, len(ids))
        grads = np.array(chunk.grads).reshape(rows, len(ids))
        signs = np.where(ids % 2, -1.0, 1.0)
        np.testing.assert_array_equal(values, np.outer(xs[first : first + rows], signs))
        np.testing.assert_array_equal(grads, np.broadcast_to(signs * (-1.0) ** length, grads.shape))
        seen[ids, first : first + rows] += 1
    assert (seen == 1).all()


def two_nodes() -> pb.Graph:
    """x = 0.5 and y = -x: the smallest graph whose results can be asked for repeatedly."""
    return chain("neg", 1).proto()


def repeated_nodes(count: int, rows: int = 1) -> pb.EvaluateRequest:
    """A tiny request for a huge reply: node 0 of ``two_nodes`` selected ``count`` times."""
    graph = two_nodes()
    graph.leaf_values[:] = [0.5 + r for r in range(rows)]
    return pb.EvaluateRequest(graph=graph, nodes=[0] * count, rows=rows)


# A slow op ---------------------------------------------------------------------------------

NAP_OP = """
    import time
    from pathlib import Path
    from gradserve.ops import Op

    HERE = Path(__file__).parent

    def _forward(x):
        with open(HERE / "started", "a") as started:
            started.write("call\\n")
        give_up = time.monotonic() + 30
        while not (HERE / "release").exists() and time.monotonic() < give_up:
            time.sleep(0.01)
        return x.copy()

    nap = Op("nap", 1, forward=_forward, backward=lambda g, y, x: (g,))
"""


class Naps:
    """The `nap` op's files: each call appends to ``started`` and then waits (up to 30 s)
    for ``release`` to exist."""

    def __init__(self, folder: Path) -> None:
        self.started = folder / "started"
        self.release = folder / "release"

    def count(self) -> int:
        return len(self.started.read_text().split()) if self.started.exists() else 0

    def reset(self) -> None:
        self.started.unlink(missing_ok=True)
        self.release.unlink(missing_ok=True)


def nap_server(folder: Path, *flags: str):
    """A server with the trusted `nap` plugin installed from ``folder``."""
    install_fake_plugin(folder, "nap-plugin", "nap", NAP_OP, {"nap": "nap"})
    pythonpath = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    return serve("--trusted-plugins", "nap-plugin", *flags, env={"PYTHONPATH": pythonpath})


def nap_request(negs: int = 0) -> pb.EvaluateRequest:
    """x = 0.5, nap(x), then ``negs`` neg nodes (a node count of its own finds its log line)."""
    g = GraphBuilder()
    node = g.op("nap", g.leaf(0.5))
    for _ in range(negs):
        node = g.op("neg", node)
    return pb.EvaluateRequest(graph=g.proto())


def napping_batch(negs: int, rows: int) -> pb.EvaluateRequest:
    """x over ``rows`` rows in [-1, 1], nap(x) (the identity, which waits for the test),
    then ``negs`` negations; the leaf's value and gradient, (-1)^negs, are asked for."""
    xs = np.linspace(-1, 1, rows)
    graph = chain_graph("neg", negs + 1, xs.tolist())
    graph.op_names.append("nap")
    graph.node_ops[1] = len(graph.op_names)  # the first step naps instead of negating
    return pb.EvaluateRequest(graph=graph, rows=rows, nodes=[0])


def check_napping_batch(reply: pb.EvaluateResponse, negs: int, rows: int) -> None:
    """``napping_batch``'s reply is right: x itself, and a gradient of (-1)^negs."""
    np.testing.assert_array_equal(reply.values, np.linspace(-1, 1, rows))
    np.testing.assert_array_equal(reply.grads, np.full(rows, (-1.0) ** negs))


# Abusive clients -------------------------------------------------------------------------


class HalfOpenCall:
    """A call that sends its headers and never its request message: its request generator
    blocks until ``close()`` and then ends without yielding anything."""

    def __init__(
        self, channel: grpc.Channel, method: str, metadata=(), timeout: float = 60
    ) -> None:
        self.release = threading.Event()
        self.done = threading.Event()
        self.call = channel.stream_stream(method)(
            self._requests(), metadata=metadata, timeout=timeout
        )
        self.call.add_done_callback(lambda _: self.done.set())

    def _requests(self):
        self.release.wait()
        yield from ()

    def close(self) -> None:
        self.call.cancel()
        self.release.set()


def never_read_streams(stub, request: pb.EvaluateRequest, count: int, timeout: float = 60):
    """``count`` EvaluateStream calls whose iterators are never advanced: the client asks
    for no message, so the replies back up into the server once the windows fill."""
    return [stub.EvaluateStream(request, timeout=timeout) for _ in range(count)]


def replying(calls, timeout: float) -> bool:
    """Whether every call got the server's response headers (or ended) within ``timeout``:
    the server has taken them up and started to reply."""
    threads = [threading.Thread(target=call.initial_metadata, daemon=True) for call in calls]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in threads)


# Readings of the server ------------------------------------------------------------------


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A field of /proc/PID/status: VmRSS (resident now) or VmHWM (peak resident)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MemoryWatch:
    """Samples a server's resident memory while a test runs and kills the server once it
    passes ``limit_mib``, so that a server without memory admission fails the test quickly
    instead of taking the machine's memory. ``peak_mib`` is the kernel's peak (VmHWM)."""

    def __init__(self, served: Served, limit_mib: float) -> None:
        self.served = served
        self.limit_mib = limit_mib
        self.killed_at_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        pid = self.served.process.pid
        while not self._stop.wait(0.01):
            try:
                rss = memory_kib(pid) / 1024
            except (OSError, AttributeError):
                return
            if rss > self.limit_mib:
                self.killed_at_mib = rss
                self.served.process.kill()
                return

    @property
    def peak_mib(self) -> float:
        return memory_kib(self.served.process.pid, "VmHWM") / 1024

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop watching; a kill is the failure to report, whatever else went wrong after."""
        self._stop.set()
        self._thread.join()
        self._check_not_killed()

    def _check_not_killed(self) -> None:
        assert self.killed_at_mib is None, (
            f"the server's memory passed {self.limit_mib:.0f} MiB "
            f"({self.killed_at_mib:.0f} MiB); it was killed"
        )

    def check(self) -> None:
        """The server was not killed and its peak stayed under the limit."""
        self._check_not_killed()
        peak = self.peak_mib
        assert peak < self.limit_mib, f"peak memory {peak:.0f} MiB >= {self.limit_mib:.0f} MiB"


def idle_mib(served: Served) -> float:
    """The server's peak memory so far: at start, what it needs before any big call."""
    return memory_kib(served.process.pid, "VmHWM") / 1024


def call_lines(served: Served, method: str | None = None) -> list[re.Match]:
    """The server's per-call log lines (``METHOD nodes=N status=S T ms``) so far."""
    return [m for m in CALL_LINE.finditer(served.log) if method in (None, m["method"])]


def wait_for_call_line(served: Served, method: str, nodes: int, timeout: float = 30):
    """The first call log line for ``method`` on a graph of ``nodes`` nodes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in call_lines(served, method):
            if int(line["nodes"]) == nodes:
                return line
        if served.process.poll() is not None:
            break
        time.sleep(0.02)
    pytest.fail(f"no call line for {method} nodes={nodes} within {timeout} s:\n{served.log}")


def line_time(line: re.Match) -> float:
    """The epoch time a call log line was stamped with (the call's end, local time)."""
    return datetime.strptime(line["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
