"""NaN and Inf: refused by default naming the node where they start, IEEE when allowed."""

import math

import grpc
import pytest
from graphs import GraphBuilder
from hardening import violations

from gradserve.v1 import gradserve_pb2 as pb


def _refusal(stub, request) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "allow_non_finite" in caught.value.details()
    [violation] = violations(caught.value)
    return violation


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_leaf_is_refused_unless_allowed(stub, bad):
    g = GraphBuilder()
    a, b = g.leaf(1.0), g.leaf(bad)
    g.op("add", a, b)
    field, description = _refusal(stub, pb.EvaluateRequest(graph=g.proto()))
    assert field == "graph.leaf_values[1]" and "node 1" in description
    reply = stub.Evaluate(pb.EvaluateRequest(graph=g.proto(), allow_non_finite=True))
    assert math.isnan(reply.values[2]) if math.isnan(bad) else reply.values[2] == bad
    assert list(reply.grads) == [1.0, 1.0, 1.0]


def test_an_overflowing_op_is_named_at_the_first_node_that_overflows(stub):
    g = GraphBuilder()
    x = g.leaf(800.0)
    first = g.op("exp", x)  # e^800 = inf
    g.op("exp", first)
    field, description = _refusal(stub, pb.EvaluateRequest(graph=g.proto()))
    assert field == f"graph.node_ops[{first}]" and "inf" in description
    reply = stub.Evaluate(pb.EvaluateRequest(graph=g.proto(), allow_non_finite=True))
    assert list(reply.values[1:]) == [math.inf, math.inf]


def test_an_infinite_derivative_is_named_where_it_starts(stub):
    g = GraphBuilder()
    x = g.leaf(0.0)
    g.op("sqrt", x)  # d sqrt(x)/dx is infinite at 0
    field, _ = _refusal(stub, pb.EvaluateRequest(graph=g.proto()))
    assert field == f"graph.node_ops[{x}]"
    reply = stub.Evaluate(pb.EvaluateRequest(graph=g.proto(), allow_non_finite=True))
    assert list(reply.grads) == [math.inf, 1.0]


def test_an_infinite_seed_is_refused(stub):
    g = GraphBuilder()
    a = g.leaf(2.0)
    out = g.op("neg", a)
    request = pb.EvaluateRequest(graph=g.proto(), outputs=[out], seeds=[math.inf])
    field, _ = _refusal(stub, request)
    assert field == f"graph.node_ops[{out}]"
