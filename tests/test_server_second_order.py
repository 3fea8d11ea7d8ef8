"""Requests with leaf tangents over gRPC: value and gradient tangents in Evaluate and
EvaluateStream replies, against closed forms and finite differences of first-order calls;
rows; refusals; ListOps' second_order."""

import math

import grpc
import numpy as np
import pytest
from graphs import GraphBuilder, neuron
from second_graphs import random_graph

from gradserve.client import connect
from gradserve.ops import Op
from gradserve.server.registry import LoadedOp
from gradserve.server.service.app import running_server
from gradserve.v1 import gradserve_pb2 as pb

H = 1e-5


def with_leaf_values(graph: pb.Graph, x: np.ndarray) -> pb.Graph:
    copy = pb.Graph()
    copy.CopyFrom(graph)
    del copy.leaf_values[:]
    copy.leaf_values.extend(x.tolist())
    return copy


def first_order(stub, graph: pb.Graph, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values and gradients of a first-order call at leaf values ``x``."""
    reply = stub.Evaluate(pb.EvaluateRequest(graph=with_leaf_values(graph, x)))
    return np.array(reply.values), np.array(reply.grads)


def test_list_ops_says_every_standard_op_has_second_derivatives(stub):
    ops = stub.ListOps(pb.ListOpsRequest()).ops
    assert ops and all(op.second_order for op in ops if op.distribution == "gradserve-ops-core")


def test_the_neuron_skips_the_small_call_path_and_matches_the_closed_form(stub):
    builder, ids = neuron()
    t = np.array([0.0, 0.0, 0.0, 0.0, 1.0])  # along b: d o/d b, d2 o / d b d leaf
    request = pb.EvaluateRequest(graph=builder.proto(), leaf_tangents=t.tolist())
    reply = stub.Evaluate(request)
    n = 2.0 * -3.0 + 0.0 * 1.0 + 6.8813735870195432
    sech2 = 1 - math.tanh(n) ** 2
    d2 = -2 * math.tanh(n) * sech2  # d2 o / dn2
    assert reply.value_tangents[ids["o"]] == pytest.approx(sech2, rel=1e-12)
    # grad of leaf w1 is x1 * sech2(n); its derivative along b is x1 * d2.
    assert reply.grad_tangents[ids["w1"]] == pytest.approx(2.0 * d2, rel=1e-12)
    assert reply.grad_tangents[ids["b"]] == pytest.approx(d2, rel=1e-12)
    plain = stub.Evaluate(pb.EvaluateRequest(graph=builder.proto()))
    assert not plain.value_tangents and not plain.grad_tangents
    assert list(reply.grads) == pytest.approx(list(plain.grads), rel=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_random_graphs_match_finite_differences_of_first_order_calls(stub, ops, seed):
    rng = np.random.default_rng(100 + seed)
    builder = random_graph(ops, rng, n_leaves=3, n_ops=25)
    x = np.array(builder.leaf_values)
    t = rng.normal(size=len(x))
    graph = builder.proto()
    reply = stub.Evaluate(pb.EvaluateRequest(graph=graph, leaf_tangents=t.tolist()))
    v_up, g_up = first_order(stub, graph, x + H * t)
    v_down, g_down = first_order(stub, graph, x - H * t)
    value_fd, grad_fd = (v_up - v_down) / (2 * H), (g_up - g_down) / (2 * H)
    np.testing.assert_allclose(reply.value_tangents, value_fd, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(reply.grad_tangents, grad_fd, rtol=1e-5, atol=1e-5)


def test_stream_and_rows_carry_the_same_tangents(stub, ops):
    builder = random_graph(ops, np.random.default_rng(7), n_leaves=3, n_ops=40)
    x = np.array(builder.leaf_values)
    directions = np.eye(3)
    singles = [
        stub.Evaluate(pb.EvaluateRequest(graph=builder.proto(), leaf_tangents=d.tolist()))
        for d in directions
    ]
    request = pb.EvaluateRequest(
        graph=with_leaf_values(builder.proto(), np.tile(x, 3)),
        rows=3,
        leaf_tangents=directions.ravel().tolist(),
        chunk_size=9,
    )
    batch = stub.Evaluate(request)
    chunks = list(stub.EvaluateStream(request))
    n = len(builder.node_ops)
    assert len(chunks) > 1 and all(len(c.value_tangents) == 3 * len(c.node_ids) for c in chunks)
    for field in ("value_tangents", "grad_tangents"):
        together = np.array(getattr(batch, field)).reshape(3, n)
        streamed = np.concatenate(
            [np.array(getattr(c, field)).reshape(3, -1) for c in chunks], axis=1
        )
        np.testing.assert_array_equal(streamed, together)
        for r, single in enumerate(singles):
            np.testing.assert_allclose(together[r], getattr(single, field), rtol=1e-12, atol=1e-14)


def test_a_cached_plan_with_new_values_and_tangents(stub):
    builder, ids = neuron()
    first = stub.Evaluate(pb.EvaluateRequest(graph=builder.proto()))
    graph = pb.Graph(leaf_values=builder.leaf_values)
    request = pb.EvaluateRequest(
        graph=graph, plan_digest=first.plan_digest, leaf_tangents=[1.0, 0, 0, 0, 0]
    )
    reply = stub.Evaluate(request)
    assert reply.value_tangents[ids["o"]] == pytest.approx(-3.0 * 0.5, rel=1e-12)  # w1 sech2


def test_tangents_of_the_wrong_length_are_invalid(stub):
    builder, _ = neuron()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(graph=builder.proto(), leaf_tangents=[1.0]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "leaf_tangents has 1 entries; it needs one per leaf value (5)" in caught.value.details()


def test_an_op_without_second_derivatives_is_invalid_argument_naming_it(registry):
    cube = Op("cube", 1, lambda x: x**3, lambda g, y, x: (3 * g * x * x,))
    with running_server({**registry, "cube": LoadedOp(cube, "cube", "tests", "0")}) as server:
        channel, stub = connect(f"127.0.0.1:{server.port}")
        with channel:
            ops = {op.name: op for op in stub.ListOps(pb.ListOpsRequest()).ops}
            assert not ops["cube"].second_order and ops["tanh"].second_order
            g = GraphBuilder()
            g.op("cube", g.op("sin", g.leaf(0.5)))
            plain = stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
            assert len(plain.grads) == 3
            with pytest.raises(grpc.RpcError) as caught:
                stub.Evaluate(pb.EvaluateRequest(graph=g.proto(), leaf_tangents=[1.0]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node 2: op 'cube' has no second derivatives" in caught.value.details()


def test_rows_of_tangents_are_read_row_by_row_against_the_closed_form(stub):
    """Two rows, three leaves, tangents neither square nor symmetric: f = x*y + sin(z)*x,
    whose gradient is (y + sin z, x, x cos z) and Hessian [[0, 1, cos z], [1, 0, 0],
    [cos z, 0, -x sin z]]. Tangents read column-wise or transposed would not match."""
    g = GraphBuilder()
    x, y, z = g.leaf(0.0), g.leaf(0.0), g.leaf(0.0)
    f = g.op("add", g.op("mul", x, y), g.op("mul", g.op("sin", z), x))
    leaves = np.array([[0.7, -1.3, 0.4], [2.1, 0.6, -1.9]])
    tangents = np.array([[1.0, -2.0, 0.5], [-0.25, 3.0, 1.5]])
    request = pb.EvaluateRequest(
        graph=with_leaf_values(g.proto(), leaves.ravel()),
        rows=2,
        leaf_tangents=tangents.ravel().tolist(),
        nodes=[x, y, z, f],
    )
    reply = stub.Evaluate(request)
    value_tangents = np.array(reply.value_tangents).reshape(2, 4)
    grad_tangents = np.array(reply.grad_tangents).reshape(2, 4)
    for row, ((a, b, c), v) in enumerate(zip(leaves, tangents, strict=True)):
        gradient = np.array([b + math.sin(c), a, a * math.cos(c)])
        hessian = np.array([[0, 1, math.cos(c)], [1, 0, 0], [math.cos(c), 0, -a * math.sin(c)]])
        np.testing.assert_allclose(value_tangents[row], [*v, gradient @ v], rtol=1e-13)
        np.testing.assert_allclose(grad_tangents[row, :3], hessian @ v, rtol=1e-13, atol=1e-15)
        assert grad_tangents[row, 3] == 0.0  # the output's gradient is its seed: constant
