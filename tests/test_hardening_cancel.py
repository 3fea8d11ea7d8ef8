"""A cancelled stream stops the server's work promptly and frees its memory."""

import gc
import logging
import time
import tracemalloc

import grpc
import numpy as np
import pytest
from hardening import SlowOp, chain, wait_until
from servers import serving

from gradserve.v1 import gradserve_pb2 as pb

pytestmark = pytest.mark.usefixtures("fresh_call_log_rates")  # each reads CANCELLED lines


def _call_lines(caplog, status: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"status={status}" in r.getMessage()]


def test_cancelling_a_stream_stops_the_evaluation(registry, caplog):
    slow = SlowOp(seconds=0.05)
    request = pb.EvaluateRequest(graph=chain("slow", 200).proto())  # about 10 s of work
    with caplog.at_level(logging.INFO), serving(slow.registry(registry)) as stub:
        call = stub.EvaluateStream(request)
        assert wait_until(lambda: slow.calls >= 2, timeout=10)
        call.cancel()
        assert wait_until(lambda: _call_lines(caplog, "CANCELLED"), timeout=2)
        stopped_at = slow.calls
        time.sleep(0.3)
        assert slow.calls == stopped_at < 20


def _wide_graph(leaves: int) -> pb.Graph:
    """``leaves`` leaves, each negated: twice as many nodes in one group."""
    return pb.Graph(
        op_names=["neg"],
        node_ops=[0] * leaves + [1] * leaves,
        input_counts=[0] * leaves + [1] * leaves,
        input_ids=range(leaves),
        leaf_values=np.linspace(-1, 1, leaves).tolist(),
    )


def test_a_cancelled_stream_frees_its_memory(registry, caplog):
    request = pb.EvaluateRequest(graph=_wide_graph(250_000), chunk_size=1000)
    # No plan cache: a cached plan is kept on purpose; what the call itself held must go.
    with caplog.at_level(logging.INFO), serving(registry, plan_cache_bytes=0) as stub:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            call = stub.EvaluateStream(request)
            first = next(call)
            assert first.total_nodes == 500_000 and len(first.node_ids) == 1000
            held = tracemalloc.get_traced_memory()[0] - before
            call.cancel()
            assert wait_until(lambda: _call_lines(caplog, "CANCELLED"), timeout=5)

            def released() -> bool:
                gc.collect()
                return tracemalloc.get_traced_memory()[0] - before < 0.1 * held

            assert wait_until(released, timeout=5)
        finally:
            tracemalloc.stop()
    assert held > 8 * 500_000  # the call really held its arrays (values and grads at least)


def test_a_cancelled_unary_call_is_logged_and_stops(registry, caplog):
    slow = SlowOp(seconds=0.05)
    request = pb.EvaluateRequest(graph=chain("slow", 200).proto())
    with caplog.at_level(logging.INFO), serving(slow.registry(registry)) as stub:
        future = stub.Evaluate.future(request)
        assert wait_until(lambda: slow.calls >= 2, timeout=10)
        future.cancel()
        assert wait_until(lambda: _call_lines(caplog, "CANCELLED"), timeout=2)
        assert slow.calls < 20
        assert future.cancelled() or future.exception().code() == grpc.StatusCode.CANCELLED
