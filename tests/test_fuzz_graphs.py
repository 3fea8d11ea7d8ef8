"""Property tests with hypothesis: random valid graphs against an independent reference,
corrupted graphs and random bytes against the server (always a clean status, never a hang).

GRADSERVE_FUZZ_EXAMPLES sets the examples per property (default 100, a few seconds); a long
run is ``GRADSERVE_FUZZ_EXAMPLES=20000 uv run pytest tests/test_fuzz_graphs.py``.
"""

import math
import os

import grpc
import numpy as np
import pytest
from graphs import GraphBuilder
from hardening import violations
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gradserve.server.engine.evaluate import evaluate
from gradserve.server.engine.plan import compile_graph
from gradserve.v1 import gradserve_pb2 as pb

EXAMPLES = int(os.environ.get("GRADSERVE_FUZZ_EXAMPLES", "100"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# name -> (arity or None for variadic, forward on floats, local derivatives on (y, *xs))
REFERENCE = {
    "add": (2, lambda a, b: a + b, lambda y, a, b: (1.0, 1.0)),
    "sub": (2, lambda a, b: a - b, lambda y, a, b: (1.0, -1.0)),
    "mul": (2, lambda a, b: a * b, lambda y, a, b: (b, a)),
    "neg": (1, lambda x: -x, lambda y, x: (-1.0,)),
    "tanh": (1, math.tanh, lambda y, x: (1.0 - y * y,)),
    "sin": (1, math.sin, lambda y, x: (math.cos(x),)),
    "cos": (1, math.cos, lambda y, x: (-math.sin(x),)),
    "sigmoid": (1, lambda x: 1.0 / (1.0 + math.exp(-x)), lambda y, x: (y * (1.0 - y),)),
    "sum": (None, lambda *xs: math.fsum(xs), lambda y, *xs: (1.0,) * len(xs)),
}


@st.composite
def valid_graphs(draw) -> GraphBuilder:
    g = GraphBuilder()
    for _ in range(draw(st.integers(1, 5))):
        g.leaf(draw(st.floats(-2, 2, allow_nan=False)))
    for _ in range(draw(st.integers(1, 40))):
        name = draw(st.sampled_from(sorted(REFERENCE)))
        arity = REFERENCE[name][0] or draw(st.integers(1, 5))
        node_count = len(g.node_ops)
        g.op(name, *(draw(st.integers(0, node_count - 1)) for _ in range(arity)))
    return g


def reference(g: GraphBuilder, output: int) -> tuple[list[float], list[float]]:
    """Forward in id order, then backward in reverse id order, with Python floats."""
    values, leaves = [], iter(g.leaf_values)
    inputs, start = [], 0
    for op_index, count in zip(g.node_ops, g.input_counts, strict=True):
        ids = g.input_ids[start : start + count]
        start += count
        inputs.append(ids)
        if op_index == 0:
            values.append(next(leaves))
        else:
            values.append(REFERENCE[g.op_names[op_index - 1]][1](*(values[i] for i in ids)))
    grads = [0.0] * len(values)
    grads[output] = 1.0
    for node in range(len(values) - 1, -1, -1):
        if g.node_ops[node]:
            derivative = REFERENCE[g.op_names[g.node_ops[node] - 1]][2]
            xs = [values[i] for i in inputs[node]]
            for i, local in zip(inputs[node], derivative(values[node], *xs), strict=True):
                grads[i] += grads[node] * local
    return values, grads


@fuzz
@given(valid_graphs())
def test_the_engine_agrees_with_a_reference_evaluation(ops, g):
    values, grads = reference(g, len(g.node_ops) - 1)
    assume(all(math.isfinite(v) and abs(v) < 1e12 for v in values + grads))
    plan = compile_graph(g.arrays(), ops)
    got_values, got_grads = evaluate(
        plan, np.array(g.leaf_values), np.array([len(g.node_ops) - 1]), np.ones(1)
    )
    np.testing.assert_allclose(got_values, values, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got_grads, grads, rtol=1e-9, atol=1e-9)


@settings(max_examples=max(EXAMPLES // 5, 10), deadline=None)
@given(valid_graphs())
def test_the_server_agrees_with_a_reference_evaluation(stub, g):
    values, grads = reference(g, len(g.node_ops) - 1)
    assume(all(math.isfinite(v) and abs(v) < 1e12 for v in values + grads))
    reply = stub.Evaluate(pb.EvaluateRequest(graph=g.proto()), timeout=10)
    np.testing.assert_allclose(reply.values, values, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(reply.grads, grads, rtol=1e-9, atol=1e-9)


HUGE = 2**32 - 1
CLEAN = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}


@st.composite
def corrupted_requests(draw) -> pb.EvaluateRequest:
    request = pb.EvaluateRequest(graph=draw(valid_graphs()).proto())
    graph = request.graph
    repeated = {
        "graph.node_ops": graph.node_ops,
        "graph.input_counts": graph.input_counts,
        "graph.input_ids": graph.input_ids,
        "graph.leaf_values": graph.leaf_values,
        "graph.labels": graph.labels,
        "outputs": request.outputs,
        "seeds": request.seeds,
        "nodes": request.nodes,
    }
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(repeated)))
        field = repeated[name]
        action = draw(st.sampled_from(["set", "append", "drop"]))
        if name == "graph.labels":
            value = draw(st.text(max_size=5))
        elif name in ("graph.leaf_values", "seeds"):
            value = draw(st.floats())  # NaN and Inf included
        else:
            value = draw(st.sampled_from([0, 1, 2, 7, len(graph.node_ops), HUGE]))
        if action == "drop" and len(field):
            del field[draw(st.integers(0, len(field) - 1))]
        elif action == "set" and len(field):
            field[draw(st.integers(0, len(field) - 1))] = value
        else:
            field.append(value)
    if draw(st.booleans()):
        graph.op_names.append(draw(st.sampled_from(["nosuch", "", "add", "log"])))
    request.selection = draw(st.sampled_from([0, 1, 2, 3, 99]))
    request.allow_non_finite = draw(st.booleans())
    return request


@fuzz
@given(corrupted_requests())
def test_corrupted_requests_get_a_clean_status(stub, request):
    for call in (stub.Evaluate, lambda r, timeout: list(stub.EvaluateStream(r, timeout=timeout))):
        try:
            call(request, timeout=10)
        except grpc.RpcError as error:
            assert error.code() in CLEAN, (error.code(), error.details())
            assert "Traceback" not in error.details()
            assert violations(error)


@fuzz
@given(st.binary(max_size=300))
def test_random_bytes_as_a_request_get_a_clean_status(channel, data):
    for method in ("Evaluate", "ListOps"):
        call = channel.unary_unary(f"/gradserve.v1.GradientService/{method}")
        try:
            call(data, timeout=10)
        except grpc.RpcError as error:
            assert error.code() in CLEAN, (error.code(), error.details())
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                assert violations(error)


def test_undecodable_bytes_are_invalid_argument(channel):
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/gradserve.v1.GradientService/Evaluate")(b"\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(caught.value)] == ["request"]
