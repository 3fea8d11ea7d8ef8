"""The smaller findings of issue 11 (7): NaN propagates under allow_non_finite, BadRequest
fields index what they name, health says NOT_SERVING while draining, killed isolation
workers are replaced before the next call, and a MemoryError is not blamed on a plugin."""

import math
import os
import re
import signal
import time
from pathlib import Path

import grpc
import pytest
from graphs import GraphBuilder
from hardening import violations, wait_until
from resilience import (
    HANG_S,
    Naps,
    channel_to,
    health_status,
    nap_request,
    nap_server,
    serve,
    stub_on,
)
from test_registry import install_fake_plugin

from gradserve.v1 import gradserve_pb2 as pb


@pytest.fixture(scope="module")
def stub():
    with serve() as served, channel_to(served.port) as channel:
        yield stub_on(channel)


def _nan_into(op: str) -> GraphBuilder:
    g = GraphBuilder()
    x = g.leaf(math.nan)
    if op == "pow":
        g.op("pow", x, g.leaf(2.0))
    else:
        g.op(op, x)
    return g


@pytest.mark.parametrize("op", ["log", "sqrt", "pow"])
def test_nan_propagates_through_ops_with_a_domain(stub, op):
    """With allow_non_finite a NaN input is no domain error: the op's value is NaN."""
    request = pb.EvaluateRequest(graph=_nan_into(op).proto(), allow_non_finite=True)
    reply = stub.Evaluate(request, timeout=HANG_S)
    assert math.isnan(reply.values[-1])


def _fields_index_what_they_name(request: pb.EvaluateRequest, error: grpc.RpcError) -> list:
    """Every ``graph.FIELD[i]`` or ``FIELD[i]`` a violation names is a real index into that
    field of the request; the violations."""
    found = violations(error)
    assert found, "no BadRequest details"
    for field, _ in found:
        for name, index in re.findall(r"([\w.]+)\[(\d+)\]", field):
            message, attribute = (
                (request.graph, name.split(".", 1)[1])
                if name.startswith("graph.")
                else (request, name)
            )
            assert int(index) < len(getattr(message, attribute)), (field, found)
    return found


def _node_7_named(error: grpc.RpcError, found: list) -> None:
    text = " ".join([error.details(), *(f"{field} {text}" for field, text in found)])
    assert re.search(r"\bnode 7\b", text), text


def test_a_domain_error_names_a_field_its_index_indexes_and_the_node(stub):
    """log of a negative computed value at node 7, in a graph of 2 leaves: no
    `graph.leaf_values[7]`; every bracketed index is in range; node 7 is named."""
    g = GraphBuilder()
    a, b = g.leaf(2.0), g.leaf(3.0)
    s = g.op("add", a, b)  # 5
    n = g.op("neg", s)  # -5
    m = g.op("mul", n, a)  # -10
    t = g.op("add", m, b)  # -7
    u = g.op("sub", t, a)  # -9
    assert g.op("log", u) == 7
    request = pb.EvaluateRequest(graph=g.proto())
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(request, timeout=HANG_S)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = _fields_index_what_they_name(request, caught.value)
    assert "graph.leaf_values[7]" not in [field for field, _ in found]
    _node_7_named(caught.value, found)


def test_an_unknown_op_names_its_op_table_entry_and_the_node(stub):
    """Node 7 uses op table entry 2, an op nobody installed: `graph.op_names[2]`."""
    g = GraphBuilder()
    node = g.op("add", g.leaf(2.0), g.leaf(3.0))
    for _ in range(4):
        node = g.op("neg", node)
    assert g.op("no-such-op", node) == 7 and g.op_names.index("no-such-op") == 2
    request = pb.EvaluateRequest(graph=g.proto())
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(request, timeout=HANG_S)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = _fields_index_what_they_name(request, caught.value)
    assert "graph.op_names[2]" in [field for field, _ in found], found
    _node_7_named(caught.value, found)


def test_health_is_not_serving_while_draining(tmp_path):
    """SIGTERM while a call naps (so the drain lasts): health probes see NOT_SERVING before
    the port closes; the napping call still ends OK."""
    naps = Naps(tmp_path)
    with (
        nap_server(tmp_path, "--grace", "20") as served,
        channel_to(served.port) as channel,
    ):
        assert health_status(channel) == "SERVING"
        call = stub_on(channel).Evaluate.future(nap_request(), timeout=30)
        try:
            assert wait_until(lambda: naps.count() == 1, HANG_S)
            served.process.send_signal(signal.SIGTERM)
            seen = []  # SERVING until the server has handled the signal

            def probe() -> str:
                try:
                    seen.append(health_status(channel, timeout=2))
                except grpc.RpcError as error:
                    seen.append(error.code().name)
                return seen[-1]

            assert wait_until(lambda: probe() == "NOT_SERVING", HANG_S), seen
            # The nap still holds the drain open: health keeps answering, NOT_SERVING.
            assert [probe() for _ in range(3)] == ["NOT_SERVING"] * 3, seen
        finally:
            naps.release.touch()
        assert call.result(timeout=HANG_S).values[1] == 0.5
        assert served.process.wait(timeout=HANG_S) == 0


UNTRUSTED_OPS = """
    import numpy as np
    from gradserve.ops import Op

    twice = Op("twice", 1, forward=lambda x: 2 * x, backward=lambda g, y, x: (2 * g,))
    # Asks for 8 PiB: NumPy raises its MemoryError (numpy's _ArrayMemoryError).
    hog = Op("hog", 1, forward=lambda x: x + np.zeros(1 << 50)[: x.size],
             backward=lambda g, y, x: (g,))
"""


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("untrusted")
    install_fake_plugin(
        folder, "untrusted-plugin", "untrusted", UNTRUSTED_OPS, {"twice": "twice", "hog": "hog"}
    )
    pythonpath = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    with (
        serve("--isolation-workers", "2", env={"PYTHONPATH": pythonpath}) as served,
        channel_to(served.port) as channel,
    ):
        yield served, stub_on(channel)


def _twice_request() -> pb.EvaluateRequest:
    g = GraphBuilder()
    g.op("twice", g.leaf(0.5))
    return pb.EvaluateRequest(graph=g.proto())


def _isolation_workers(pid: int) -> list[int]:
    """The server's child processes started by multiprocessing's spawn."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += (task / "children").read_text().split()
    workers = []
    for child in map(int, children):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command and not _gone(child):
            workers.append(child)
    return workers


def _gone(pid: int) -> bool:
    """Exited: reaped, or a zombie with no thread left, which its parent can reap. A killed
    worker's main thread is a zombie while NumPy's threads are still exiting; until they
    have, waitpid (and so ``is_alive``) says the process runs, and a call sent to it then
    fails (seen 2 runs in 8 under load)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        threads = sum(1 for _ in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True
    return state == "Z" and threads == 1


def test_a_memory_error_in_an_isolated_worker_is_not_blamed_on_the_plugin(isolated):
    """An op whose arrays cannot be allocated: RESOURCE_EXHAUSTED, not an op failure."""
    served, stub = isolated
    g = GraphBuilder()
    g.op("hog", g.leaf(0.5))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(graph=g.proto()), timeout=HANG_S)
    assert time.monotonic() - started < HANG_S
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
    assert "plugin failed" not in caught.value.details()
    assert "plugin failed" not in served.log, served.log


def test_the_next_calls_after_both_isolation_workers_die_succeed(isolated):
    """SIGKILL both isolation workers: the next two calls succeed (no INTERNAL)."""
    served, stub = isolated
    assert list(stub.Evaluate(_twice_request(), timeout=HANG_S).values) == [0.5, 1.0]
    assert wait_until(lambda: len(_isolation_workers(served.process.pid)) == 2, HANG_S)
    killed = _isolation_workers(served.process.pid)
    for worker in killed:
        os.kill(worker, signal.SIGKILL)
    assert wait_until(lambda: all(_gone(worker) for worker in killed), HANG_S)
    for _ in range(2):
        reply = stub.Evaluate(_twice_request(), timeout=HANG_S)
        assert list(reply.values) == [0.5, 1.0] and list(reply.grads) == [2.0, 1.0]
