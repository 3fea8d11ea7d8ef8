"""What the general (array) path of the server promises and the small-call path cannot show:
seed-weighted gradients of several outputs, batch rows, and EvaluateStream's chunk sizes.

Graphs here have more than ``small_call.MAX_NODES`` nodes or more than one row, so no call
takes the small-call path (not even a structure's second call, which may run compiled); the
expected gradients are closed forms written out below.
"""

import math

import numpy as np
import pytest
from graphs import GraphBuilder

from gradserve.server.engine.small_call import MAX_NODES
from gradserve.v1 import gradserve_pb2 as pb

LEAVES = 1100  # with the products below: 3,298 nodes, past the small-call path's 2,048


def products(xs: list[float]) -> GraphBuilder:
    """Leaves x_0..x_{n-1}, then p_k = x_k * x_{k+1} and s_k = sin(x_k) for each k < n - 1."""
    g = GraphBuilder()
    for x in xs:
        g.leaf(x)
    for k in range(len(xs) - 1):
        g.op("mul", k, k + 1)
    for k in range(len(xs) - 1):
        g.op("sin", k)
    return g


def expected_leaf_grads(xs, outputs: dict[int, float]) -> list[float]:
    """d(sum_k seed_k * output_k)/dx_j for outputs p_k (id n + k) and s_k (id 2n - 1 + k)."""
    n = len(xs)
    grads = [0.0] * n
    for node, seed in outputs.items():
        if node < 2 * n - 1:  # p_k = x_k x_{k+1}
            k = node - n
            grads[k] += seed * xs[k + 1]
            grads[k + 1] += seed * xs[k]
        else:  # s_k = sin x_k
            k = node - (2 * n - 1)
            grads[k] += seed * math.cos(xs[k])
    return grads


def leaf_values(n: int) -> list[float]:
    return [0.25 + 0.01 * j for j in range(n)]


def test_the_graph_is_past_the_small_call_path():
    assert len(products(leaf_values(LEAVES)).node_ops) > MAX_NODES


def test_each_output_gets_its_own_seed_on_the_array_path(stub):
    xs = leaf_values(LEAVES)
    g = products(xs)
    n = LEAVES
    # Distinct seeds on outputs that share leaves (p_3 and p_4 share x_4; s_4 reads it too),
    # and on outputs that do not, so any permutation of the seeds changes some gradient.
    outputs = {n + 3: 2.0, n + 4: -7.0, 2 * n - 1 + 4: 0.5, n + 100: 11.0, 2 * n - 1 + 140: -3.0}
    request = pb.EvaluateRequest(
        graph=g.proto(),
        outputs=list(outputs),
        seeds=list(outputs.values()),
        selection=pb.SELECTION_LEAVES,
    )
    for reply in (stub.Evaluate(request), *stub.EvaluateStream(request)):
        np.testing.assert_allclose(reply.grads, expected_leaf_grads(xs, outputs), rtol=1e-15)


def test_each_row_gets_the_seeds_on_the_array_path(stub):
    """Three rows of a small graph (the array path, as soon as rows > 1)."""
    g = GraphBuilder()
    a, b = g.leaf(0.0), g.leaf(0.0)
    ab = g.op("mul", a, b)
    ea = g.op("exp", a)
    rows = [(0.5, -2.0), (1.5, 3.0), (-0.75, 0.25)]
    seeds = [3.0, -5.0]
    g.leaf_values = [v for row in rows for v in row]
    request = pb.EvaluateRequest(
        graph=g.proto(), rows=3, outputs=[ab, ea], seeds=seeds, nodes=[a, b, ab, ea]
    )
    reply = stub.Evaluate(request)
    assert reply.rows == 3
    values = np.reshape(reply.values, (3, 4))
    grads = np.reshape(reply.grads, (3, 4))
    for row, (x, y) in enumerate(rows):
        np.testing.assert_allclose(values[row], [x, y, x * y, math.exp(x)], rtol=1e-15)
        d_a = seeds[0] * y + seeds[1] * math.exp(x)
        d_b = seeds[0] * x
        np.testing.assert_allclose(grads[row], [d_a, d_b, seeds[0], seeds[1]], rtol=1e-15)


def wide(n: int) -> GraphBuilder:
    """n leaves and their negations: 2n nodes."""
    g = GraphBuilder()
    for j in range(n):
        g.leaf(float(j))
    for j in range(n):
        g.op("neg", j)
    return g


@pytest.fixture(scope="module")
def big_graph() -> GraphBuilder:
    return wide(70_000)  # 140,000 nodes: more than two chunks at the default size


def chunk_sizes(stub, request: pb.EvaluateRequest) -> list[int]:
    """The node count of each chunk, after checking the chunks continue each other."""
    chunks = list(stub.EvaluateStream(request, timeout=60))
    ids = np.concatenate([np.asarray(c.node_ids) for c in chunks])
    rows = request.rows or 1
    total = len(ids)
    np.testing.assert_array_equal(ids, np.arange(total))
    for chunk in chunks:
        assert chunk.total_nodes == total
        assert len(chunk.values) == len(chunk.grads) == rows * len(chunk.node_ids)
    return [len(c.node_ids) for c in chunks]


def test_stream_chunks_hold_the_default_number_of_nodes(stub, big_graph):
    """65,536 nodes a chunk: the figure the README and the proto state."""
    sizes = chunk_sizes(stub, pb.EvaluateRequest(graph=big_graph.proto()))
    assert sizes == [65_536, 65_536, 140_000 - 2 * 65_536]


def test_a_chunk_size_above_the_cap_is_capped(stub, big_graph):
    sizes = chunk_sizes(stub, pb.EvaluateRequest(graph=big_graph.proto(), chunk_size=10**6))
    assert sizes == [65_536, 65_536, 140_000 - 2 * 65_536]


def test_a_chunk_size_below_the_cap_is_used(stub):
    sizes = chunk_sizes(stub, pb.EvaluateRequest(graph=wide(500).proto(), chunk_size=300))
    assert sizes == [300, 300, 300, 100]


def test_with_rows_the_cap_is_divided_by_the_rows(stub):
    """65,536 // 3 = 21,845 nodes a chunk with three rows, asked for or not."""
    n = 20_000
    g = wide(n)
    g.leaf_values = [float(v) for v in range(3 * n)]
    for chunk_size in (0, 10**6):
        request = pb.EvaluateRequest(graph=g.proto(), rows=3, chunk_size=chunk_size)
        assert chunk_sizes(stub, request) == [21_845, 2 * n - 21_845]
    rows3 = pb.EvaluateRequest(graph=g.proto(), rows=3, chunk_size=15_000)
    assert chunk_sizes(stub, rows3) == [15_000, 15_000, 10_000]
