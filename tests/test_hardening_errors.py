"""Client errors carry google.rpc.BadRequest details; unexpected errors are opaque INTERNAL."""

import logging
import re

import grpc
import pytest
from graphs import GraphBuilder
from hardening import violations

from gradserve.server.engine import run as engine_entry
from gradserve.server.service import status
from gradserve.v1 import gradserve_pb2 as pb


def test_a_forward_reference_names_field_and_node(stub):
    g = GraphBuilder()
    a = g.leaf(1.0)
    g.op("add", a, a)
    g.input_ids[1] = 1  # node 1 reads itself: a cycle
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = violations(caught.value)
    assert field == "graph.input_ids[1]"
    assert "node 1" in description and "not earlier" in description


def test_a_request_field_error_names_the_field(stub):
    g = GraphBuilder()
    g.leaf(1.0)
    request = pb.EvaluateRequest(graph=g.proto(), outputs=[0], seeds=[1.0, 2.0])
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(caught.value)] == ["seeds"]


def test_a_stream_error_carries_the_details_too(stub):
    g = GraphBuilder()
    g.leaf(1.0)
    g.op("nosuch", 0)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.EvaluateStream(pb.EvaluateRequest(graph=g.proto())))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # op_names[0] is the op-table entry at fault (its node, 1, is in the description)
    assert [field for field, _ in violations(caught.value)] == ["graph.op_names[0]"]


def test_an_unexpected_error_is_internal_with_an_id_in_the_log(stub, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(engine_entry, "compile_graph", broken)
    g = GraphBuilder()
    g.leaf(1.0, label="never compiled before")  # a new structure: no plan cache hit
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details()
    assert "secret" not in details and "Traceback" not in details
    error_id = re.search(r"error id ([0-9a-f]{12})", details).group(1)
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and "secret internals" in str(logged[0].exc_info[1])


def test_an_unknown_selection_with_nodes_is_invalid_argument(stub):
    """Found by the fuzz test: this was an INTERNAL (a ValueError naming the enum value)."""
    g = GraphBuilder()
    g.leaf(1.0)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(graph=g.proto(), selection=99, nodes=[0]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(caught.value)] == ["selection"]


def test_of_several_out_of_range_ids_the_first_is_named(stub):
    g = GraphBuilder()
    g.leaf(1.0)
    request = pb.EvaluateRequest(graph=g.proto(), outputs=[0, 7, 9], seeds=[1.0, 1.0, 1.0])
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = violations(caught.value)
    assert field == "outputs[1]"
    assert description.startswith("outputs[1] = 7 is out of range")


def test_a_text_is_cut_only_past_max_text_and_then_says_how_long_it_was():
    assert status.bounded("x" * status.MAX_TEXT) == "x" * status.MAX_TEXT
    cut = status.bounded("y" * (status.MAX_TEXT + 1))
    assert len(cut) <= status.MAX_TEXT and cut.startswith("y" * (status.MAX_TEXT // 2))
    assert cut.endswith(f"({status.MAX_TEXT + 1} characters in all)")


@pytest.mark.parametrize("rows", [0, 1])
def test_one_row_missing_a_leaf_value_names_the_leaf_without_it(stub, rows):
    g = GraphBuilder()
    g.op("mul", g.leaf(1.0, label="a"), g.leaf(2.0, label="b"))
    graph = g.proto()
    del graph.leaf_values[1:]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(graph=graph, rows=rows))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = violations(caught.value)
    assert field == "graph.leaf_values"
    assert "2 leaves but leaf_values has 1" in description
    assert "leaf 1 ('b') has no value" in description


@pytest.mark.parametrize("method", ["Evaluate", "EvaluateStream"])
def test_bytes_that_are_no_request_are_an_invalid_argument_naming_the_request(server, method):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        path = f"/gradserve.v1.GradientService/{method}"
        with pytest.raises(grpc.RpcError) as caught:
            if method == "Evaluate":
                channel.unary_unary(path)(b"\xff\xff\xff")
            else:
                list(channel.unary_stream(path)(b"\xff\xff\xff"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = violations(caught.value)
    assert field == "request" and "not a valid protobuf message" in description
