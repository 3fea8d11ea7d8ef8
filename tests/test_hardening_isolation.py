"""An untrusted op that hangs is cut off at the call's deadline and capacity comes back."""

import os
import time

import grpc
import pytest
from graphs import neuron
from hardening import chain
from servers import Served, health
from test_registry import install_fake_plugin

from gradserve.client import connect
from gradserve.server.runtime.isolation import IsolatedEvaluator
from gradserve.v1 import gradserve_pb2 as pb

FAULTY_OPS = """
    import time
    from gradserve.ops import Op

    hang = Op("hang", 1, forward=lambda x: time.sleep(3600), backward=lambda g, y, x: (g,))
    twice = Op("twice", 1, forward=lambda x: 2 * x, backward=lambda g, y, x: (2 * g,))

    def _boom(x):
        raise ZeroDivisionError("plugin internals")

    boom = Op("boom", 1, forward=_boom, backward=lambda g, y, x: (g,))
"""


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    ops = {"hang": "hang", "twice": "twice", "boom": "boom"}
    install_fake_plugin(root, "faulty-plugin", "faulty", FAULTY_OPS, ops)
    pythonpath = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    flags = ("--threads", "2", "--isolation-workers", "1", "--default-deadline", "2")
    with Served(*flags, "--workers", "1", env={**os.environ, "PYTHONPATH": pythonpath}) as served:
        channel, stub = connect(f"127.0.0.1:{served.port}")
        with channel:
            yield stub, served.port


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_a_hanging_op_is_cut_off_and_capacity_comes_back(faulty_server):
    stub, port = faulty_server
    hang = pb.EvaluateRequest(graph=chain("hang", 1).proto())
    for _ in range(3):  # more hanging calls than workers and handler threads
        started = time.monotonic()
        assert _code(lambda: stub.Evaluate(hang, timeout=1)) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3
    # Without a deadline of its own the call gets the server's default (2 s here).
    assert _code(lambda: stub.Evaluate(hang)) == grpc.StatusCode.DEADLINE_EXCEEDED
    twice = stub.Evaluate(pb.EvaluateRequest(graph=chain("twice", 3).proto()), timeout=30)
    assert list(twice.values) == [0.5, 1.0, 2.0, 4.0] and list(twice.grads) == [8.0, 4.0, 2.0, 1.0]
    assert len(stub.Evaluate(pb.EvaluateRequest(graph=neuron()[0].proto()), timeout=5).values) == 10
    assert health(port).returncode == 0


def test_an_isolated_op_that_raises_fails_only_that_call(faulty_server):
    stub, _ = faulty_server
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(graph=chain("boom", 2).proto()), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "node 1: op 'boom' failed in forward" in caught.value.details()
    assert "plugin internals" not in caught.value.details()
    twice = stub.Evaluate(pb.EvaluateRequest(graph=chain("twice", 1).proto()), timeout=30)
    assert list(twice.values) == [0.5, 1.0]


def test_closing_the_isolation_ends_its_idle_workers():
    """What a server's stop calls: every worker process it started has ended (not only once
    the server's own process exits, which takes daemon children with it)."""
    isolation = IsolatedEvaluator(["add"], ["add"], workers=2)
    processes = [worker.process for worker in list(isolation._idle.queue)]
    assert len(processes) == 2 and all(process.is_alive() for process in processes)
    isolation.close()
    assert not any(process.is_alive() for process in processes)
