"""Error messages name the node with its label quoted, as the proto promises
(``node 7 ('x1*w1'): ...``), every client string quoted back is bounded, and an op plugin's
failure carries an error id that leads to the server log."""

import re

import grpc
import pytest
from graphs import GraphBuilder
from hardening import violations
from servers import serving

from gradserve.ops import Op
from gradserve.server.engine.errors import QUOTE_LIMIT, GraphError, quote
from gradserve.server.registry import LoadedOp
from gradserve.v1 import gradserve_pb2 as pb


def test_quote_leaves_short_text_whole():
    assert quote("x1*w1") == "'x1*w1'"
    assert quote("a" * QUOTE_LIMIT) == repr("a" * QUOTE_LIMIT)


def test_quote_cuts_long_text_and_gives_its_length():
    quoted = quote("abc" * 349_526)  # 1,048,578 characters
    assert quoted == repr("abc" * 21 + "a…") + " (1048578 characters)"


def test_a_graph_error_names_the_label_once_it_knows_it():
    error = GraphError("bad", node=1, field="graph.input_ids")
    assert str(error) == "node 1: bad"
    error.label_from(["a", "x1*w1"])
    assert str(error) == "node 1 ('x1*w1'): bad"
    unlabelled = GraphError("bad", node=1)
    unlabelled.label_from(["a", ""])
    assert str(unlabelled) == "node 1: bad"
    first = GraphError("bad", node=0)  # the first node's label as any other's
    first.label_from(["a", "b"])
    assert str(first) == "node 0 ('a'): bad"
    past_the_labels = GraphError("bad", node=2)
    past_the_labels.label_from(["a", "b"])
    assert str(past_the_labels) == "node 2: bad"


def _failure(stub, request) -> tuple[grpc.StatusCode, str, list]:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(request)
    return caught.value.code(), caught.value.details(), violations(caught.value)


def test_a_compile_error_quotes_the_label(stub):
    g = GraphBuilder()
    x1, w1 = g.leaf(2.0, "x1"), g.leaf(-3.0, "w1")
    g.op("mul", x1, w1, label="x1*w1")
    g.input_counts[2] = 1  # mul with one input
    g.input_ids.pop()
    code, message, [(field, description)] = _failure(stub, pb.EvaluateRequest(graph=g.proto()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("node 2 ('x1*w1'): op 'mul' takes 2 input(s)"), message
    assert field == "graph.input_counts[2]" and description == message


def test_an_evaluation_error_quotes_the_label_on_a_cached_plan_too(stub):
    g = GraphBuilder()
    x = g.leaf(2.0, "x")
    g.op("log", x, label="log(x)")
    first = stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
    reuse = pb.EvaluateRequest(graph=pb.Graph(leaf_values=[-1.0]), plan_digest=first.plan_digest)
    code, message, _ = _failure(stub, reuse)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("node 1 ('log(x)'): "), message


def test_a_huge_label_is_quoted_bounded(stub):
    g = GraphBuilder()
    g.leaf(1.0, "x" * 1_000_000)
    g.op("tanh", 0, label="")
    g.op("tanh", 0, label="y" * 1_000_000)
    g.input_ids[1] = 2  # node 2 reads node 2: not earlier
    code, message, _ = _failure(stub, pb.EvaluateRequest(graph=g.proto()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith(f"node 2 ('{'y' * QUOTE_LIMIT}…' (1000000 characters)): ")
    assert len(message) < 400


def test_a_huge_unknown_op_name_is_quoted_bounded(stub):
    g = GraphBuilder()
    g.op(f"no{'p' * 100_000}", g.leaf(1.0))
    code, message, [(field, _)] = _failure(stub, pb.EvaluateRequest(graph=g.proto()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("node 1: unknown op 'nopp")
    assert "(100002 characters)" in message and len(message) < 400
    assert field == "graph.op_names[0]"


def test_duplicate_op_names_name_the_second_listing(stub):
    g = GraphBuilder()
    g.op("tanh", g.leaf(1.0))
    graph = g.proto()
    graph.op_names.append("tanh")
    code, message, [(field, _)] = _failure(stub, pb.EvaluateRequest(graph=graph))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field == "graph.op_names[1]" and "'tanh' twice" in message


def _fail(*args):
    raise RuntimeError("the plugin's own words")


def test_an_op_plugin_failure_carries_an_error_id_found_in_the_log(registry, caplog):
    failing = LoadedOp(Op("failing", 1, _fail, lambda g, y, x: (g,)), "failing", "faulty", "0")
    g = GraphBuilder()
    g.op("failing", g.leaf(1.0))
    with serving({**registry, "failing": failing}) as stub, pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    message = caught.value.details()
    assert message.startswith("node 1: op 'failing' failed in forward; the op plugin failed")
    assert "own words" not in message
    error_id = re.search(r"\(error id ([0-9a-f]{12}), see server log\)", message).group(1)
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert "own words" in "".join(record.exc_text or "")
