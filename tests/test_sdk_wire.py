"""The SDK writes a Graph's packed columns from NumPy arrays: byte for byte what protobuf writes."""

import numpy as np
import pytest

from gradserve.client import Value, calls, wire
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1.wire_format import packed_varints

EDGES = [0, 1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 2**32 - 1]


@pytest.mark.parametrize("n", [0, 1, 11, 5000])
@pytest.mark.parametrize("high", [2, 2**7, 2**20, 2**32])
def test_varints_match_protobuf(n, high):
    ids = np.random.default_rng(n).integers(0, high, n)
    if high == 2**32:
        ids[: min(n, len(EDGES))] = EDGES[: min(n, len(EDGES))]
    expected = pb.Graph(input_ids=ids.tolist()).SerializeToString()
    assert wire.packed(4, packed_varints(ids)) == expected


def test_doubles_match_protobuf():
    values = np.array([0.0, -0.0, 1.5, -2.25e-300, 1e300, np.inf, -np.inf])
    expected = pb.Graph(leaf_values=values.tolist()).SerializeToString()
    assert wire.packed(5, wire.doubles(values)) == expected


def test_parsed_back_into_a_message():
    graph = pb.Graph(op_names=["mul"])
    graph.MergeFromString(
        wire.packed(2, packed_varints(np.array([0, 0, 1])))
        + wire.packed(4, packed_varints(np.array([0, 1])))
        + wire.packed(5, wire.doubles(np.array([2.0, 3.0])))
    )
    assert list(graph.node_ops) == [0, 0, 1]
    assert list(graph.input_ids) == [0, 1]
    assert list(graph.leaf_values) == [2.0, 3.0]
    assert list(graph.op_names) == ["mul"]


def test_a_request_written_as_bytes_parses_as_the_graph_recorded():
    x, w = Value(3.0, "x"), Value(-2.0)
    y = (x * w + 1).tanh()
    request = pb.EvaluateRequest.FromString(calls.evaluate_call(y, wrt=[w]).request)
    graph = request.graph
    # x, w, x*w, the constant 1, x*w + 1, its tanh; op indices into graph.op_names
    ops = [graph.op_names[i - 1] if i else "" for i in graph.node_ops]
    assert ops == ["", "", "mul", "", "add", "tanh"]
    assert list(graph.input_counts) == [0, 0, 2, 0, 2, 1]
    assert list(graph.input_ids) == [0, 1, 2, 3, 4]
    assert list(graph.leaf_values) == [3.0, -2.0, 1.0]
    assert list(graph.labels) == ["x", "", "", "", "", ""]
    assert list(request.outputs) == [5]
    assert request.selection == pb.SELECTION_NODES
    assert list(request.nodes) == [1]


def test_a_request_by_plan_digest_holds_its_fields_and_this_steps_leaf_values():
    """A training loop's request by plan digest: the same as protobuf's message of the same
    fields, with the leaf values read at each step (its other bytes are encoded once)."""
    w, x = Value(0.5), Value(-2.0)
    loss = (w * x + 1.0).relu()
    plans = calls.PlanDigests()

    class Reply:
        plan_digest = b"\x07" * 16

    plans.learn(calls.backward_call(loss, plans=plans), Reply())
    for step in range(3):
        w.data = 0.5 + step
        call = calls.backward_call(loss, plans=plans)
        expected = pb.EvaluateRequest(
            outputs=[len(call.subgraph) - 1],
            selection=pb.SELECTION_ALL,
            chunk_size=calls.STREAM_ABOVE,  # a backward of few nodes: one message
            plan_digest=Reply.plan_digest,
            graph=pb.Graph(leaf_values=[0.5 + step, -2.0, 1.0]),
        )
        assert pb.EvaluateRequest.FromString(call.request) == expected
