"""Limits: nodes, fan-in, message size, concurrent calls, default deadline."""

import time

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from graphs import GraphBuilder
from grpc_status import rpc_status
from hardening import SlowOp, chain, violations, wait_until
from servers import serving

from gradserve.server.cli import build_parser
from gradserve.server.service import evaluation as servicer
from gradserve.server.service.limits import LimitExceeded, Limits
from gradserve.v1 import gradserve_pb2 as pb


def _sum_of_leaves(count: int) -> GraphBuilder:
    g = GraphBuilder()
    leaves = [g.leaf(float(i)) for i in range(count)]
    g.op("sum", *leaves)
    return g


def test_too_many_nodes_is_refused_before_any_conversion(registry, monkeypatch):
    converted = []
    monkeypatch.setattr(servicer.wire, "graph_arrays", lambda g: converted.append(g))
    with (
        serving(registry, limits=Limits(max_nodes=10)) as stub,
        pytest.raises(grpc.RpcError) as caught,
    ):
        stub.Evaluate(pb.EvaluateRequest(graph=_sum_of_leaves(10).proto()))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max-nodes = 10" in caught.value.details()
    assert [field for field, _ in violations(caught.value)] == ["graph.node_ops"]
    assert converted == []


def test_a_node_wider_than_max_fan_in_is_named(registry):
    with serving(registry, limits=Limits(max_fan_in=4)) as stub:
        reply = stub.Evaluate(pb.EvaluateRequest(graph=_sum_of_leaves(4).proto(), nodes=[4]))
        assert list(reply.values) == [0.0 + 1.0 + 2.0 + 3.0]
        with pytest.raises(grpc.RpcError) as caught:
            stub.Evaluate(pb.EvaluateRequest(graph=_sum_of_leaves(5).proto()))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max-fan-in = 4" in caught.value.details()
    assert [field for field, _ in violations(caught.value)] == ["graph.input_counts[5]"]


def test_of_several_nodes_wider_than_max_fan_in_the_first_is_named():
    with pytest.raises(LimitExceeded) as caught:
        Limits(max_fan_in=4).check_fan_in(np.array([0, 0, 5, 1, 9, 4]))
    assert caught.value.node == 2
    assert str(caught.value).startswith("node 2: the node reads 5 inputs, more than")


def test_a_request_larger_than_the_message_limit_is_refused(registry):
    with (
        serving(registry, max_message_bytes=1024) as stub,
        pytest.raises(grpc.RpcError) as caught,
    ):
        stub.Evaluate(pb.EvaluateRequest(graph=_sum_of_leaves(300).proto()))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_calls_beyond_max_concurrent_calls_are_refused_at_once(registry):
    slow = SlowOp(seconds=30)
    with serving(slow.registry(registry), limits=Limits(max_concurrent_calls=1)) as stub:
        first = stub.Evaluate.future(pb.EvaluateRequest(graph=chain("slow", 1).proto()))
        assert wait_until(lambda: slow.calls == 1, timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            # A generous deadline: a call that queued instead would end DEADLINE_EXCEEDED.
            stub.Evaluate(pb.EvaluateRequest(graph=chain("add", 1).proto()), timeout=20)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max-concurrent-calls = 1" in caught.value.details()
        [detail] = rpc_status.from_call(caught.value).details
        quota = error_details_pb2.QuotaFailure()
        assert detail.Unpack(quota) and quota.violations[0].subject == "max-concurrent-calls"
        assert quota.violations[0].quota_value == 1  # the limit, for clients to show
        assert stub.ListOps(pb.ListOpsRequest(), timeout=10).ops  # ListOps is never refused
        slow.release.set()
        assert len(first.result(timeout=10).node_ids) == 2
        assert stub.ListOps(pb.ListOpsRequest(), timeout=10).ops  # capacity is back


def test_calls_without_a_deadline_get_the_default_one(registry):
    slow = SlowOp(seconds=0.1)
    request = pb.EvaluateRequest(graph=chain("slow", 30).proto())  # about 3 s of work
    with serving(slow.registry(registry), limits=Limits(default_deadline_s=0.5)) as stub:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Evaluate(request)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2
        calls_when_stopped = slow.calls
        # A caller's own, longer deadline wins over the default.
        reply = stub.Evaluate(request, timeout=30)
    assert calls_when_stopped < 30 and len(reply.node_ids) == 31


def test_every_limit_has_a_flag_and_an_environment_variable(monkeypatch):
    monkeypatch.setenv("GRADSERVE_MAX_NODES", "7")
    monkeypatch.setenv("GRADSERVE_DEFAULT_DEADLINE", "2.5")
    args = build_parser().parse_args(["serve", "--max-fan-in", "3"])
    assert (args.max_nodes, args.max_fan_in, args.default_deadline) == (7, 3, 2.5)
    assert args.max_concurrent_calls == Limits().max_concurrent_calls


def test_the_default_limits_admit_tens_of_millions_of_nodes():
    limits = Limits()
    assert limits.max_nodes >= 10_000_000
    request = pb.EvaluateRequest()
    request.graph.node_ops.extend([0] * 1000)
    limits.check_sizes(request)  # a plain graph passes


def test_a_reply_too_big_for_one_message_is_refused_before_evaluation_by_its_selection(
    registry,
):
    """The reply-size check counts what the selection returns: the leaves of a batch fit
    where every node's results would not (1 MiB messages here)."""
    g = GraphBuilder()
    x = g.leaf(0.5)
    node = x
    for _ in range(999):
        node = g.op("neg", node)
    rows = 200  # every node: 1,000 x 200 x 16 bytes = 3.2 MB; the leaf alone: 3.2 kB
    graph = g.proto()
    graph.leaf_values[:] = [float(r) for r in range(rows)]
    with serving(registry, max_message_bytes=2**20) as stub:
        leaves = stub.Evaluate(
            pb.EvaluateRequest(graph=graph, rows=rows, selection=pb.SELECTION_LEAVES)
        )
        assert list(leaves.values) == [float(r) for r in range(rows)]
        assert list(leaves.grads) == [-1.0] * rows  # 999 negations
        with pytest.raises(grpc.RpcError) as caught:
            stub.Evaluate(pb.EvaluateRequest(graph=graph, rows=rows))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "EvaluateStream" in caught.value.details()
        # 1,000 nodes x 200 rows x 2 doubles, and an id of up to 5 bytes a node: 3.06 MiB
        assert (
            "the reply would take about 3.1 MiB, more than this server's max-message-mb = 1;"
            in caught.value.details()
        )
        chunks = list(stub.EvaluateStream(pb.EvaluateRequest(graph=graph, rows=rows)))
        assert sum(len(chunk.node_ids) for chunk in chunks) == 1000


def test_a_connection_may_hold_a_quarter_of_the_call_slots_and_at_least_one():
    """docs/running-safely.md: "a quarter of --max-concurrent-calls"; a server of fewer than
    four slots still lets each connection make a call."""
    quarters = [Limits(max_concurrent_calls=c).max_calls_per_connection for c in (1, 7, 8, 256)]
    assert quarters == [1, 1, 2, 64]
    assert Limits(max_concurrent_calls=8, calls_per_connection=5).max_calls_per_connection == 5
