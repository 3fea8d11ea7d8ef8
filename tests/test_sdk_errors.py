"""Failures reach the user as typed exceptions with the server's reason, not gRPC tracebacks."""

from concurrent import futures

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gradserve.client import (
    Client,
    DeadlineExceeded,
    GradserveError,
    GraphError,
    ServerError,
    ServerUnavailable,
    Value,
)
from gradserve.client.errors import translate
from gradserve.client.train_stream import StreamedStatus
from gradserve.ops import Op
from gradserve.server.registry import LoadedOp
from gradserve.server.service.app import running_server
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def client(target):
    with Client(target) as client:
        yield client


def test_an_unknown_op_names_the_node_and_its_value(client):
    x = Value(2.0, "x")
    bad = (x * 3).apply("no_such_op")
    bad.label = "bad"
    loss = bad + 1
    with pytest.raises(GraphError) as caught:
        loss.backward(client)
    error = caught.value
    assert error.node == 3  # x, 3, x*3, then the bad node
    assert error.value is bad
    assert error.reason == "unknown op 'no_such_op'"
    assert str(error) == "node 3 ('bad'): unknown op 'no_such_op'"
    assert error.__cause__ is None and error.__suppress_context__  # no gRPC chain shown
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("label", ["log(x)", "it's (odd)", "x" * 100 + ")"])
def test_a_labelled_node_is_found_whatever_its_label(client, label):
    """The server quotes the node's label in its message (cut when long): the node id and
    the reason are read back whatever characters the label has."""
    x = Value(-1.0)
    y = x.log()
    y.label = label
    with pytest.raises(GraphError) as caught:
        client.evaluate(y)
    assert caught.value.node == 1 and caught.value.value is y
    assert caught.value.reason.startswith("op 'log' is not defined at (-1.0)")


def test_a_wrong_input_count_via_apply(client):
    x = Value(1.0)
    with pytest.raises(GraphError, match="takes 1 input"):
        x.apply("tanh", 2.0).backward(client)


def test_a_domain_error_names_the_node(client):
    x = Value(-1.0)
    with pytest.raises(GraphError) as caught:
        client.evaluate(x.log())
    assert caught.value.node == 1
    assert caught.value.reason.startswith("op 'log' is not defined at (-1.0)")


def test_a_server_that_is_down_is_unavailable(unused_target):
    with Client(unused_target, timeout=5) as client, pytest.raises(ServerUnavailable) as caught:
        client.ops()
    assert isinstance(caught.value, ConnectionError)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_deadline_is_distinguishable(target):
    x = Value(1.0)
    y = x
    for _ in range(2000):
        y = y.tanh()
    with Client(target, timeout=1e-6) as client, pytest.raises(DeadlineExceeded) as caught:
        y.backward(client)
    assert isinstance(caught.value, TimeoutError)


def _failing_forward(x):
    raise RuntimeError("secret plugin detail")


def test_an_op_plugin_failure_is_a_server_error():
    op = Op("broken", 1, forward=_failing_forward, backward=lambda g, y, x: (g,))
    registry = {"broken": LoadedOp(op, "broken", "test", "0")}
    with (
        running_server(registry) as server,
        Client(f"127.0.0.1:{server.port}") as client,
        pytest.raises(ServerError) as caught,
    ):
        Value(1.0).apply("broken").backward(client)
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert "node 1: op 'broken' failed" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


class _RichErrors(pb_grpc.GradientServiceServicer):
    """Answers like issue 6's server: INVALID_ARGUMENT with a google.rpc.BadRequest."""

    def Evaluate(self, request, context):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field="graph.input_ids", description="node 2: input id 5 is not earlier than the node"
        )
        detail = status_pb2.Status().details.add()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status = status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message="the graph is invalid", details=[detail]
        )
        context.abort_with_status(rpc_status.to_status(status))


def test_rich_bad_request_details_are_parsed():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    pb_grpc.add_GradientServiceServicer_to_server(_RichErrors(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        a = Value(1.0)
        c = a + 2.0
        with Client(f"127.0.0.1:{port}") as client, pytest.raises(GraphError) as caught:
            c.backward(client)
    finally:
        server.stop(0)
    error = caught.value
    assert (error.node, error.field, error.value) == (2, "graph.input_ids", c)
    assert error.reason == "input id 5 is not earlier than the node"


def test_every_error_is_a_gradserve_error():
    for error_type in (GraphError, ServerError, ServerUnavailable, DeadlineExceeded):
        assert issubclass(error_type, GradserveError)


def test_a_bad_request_without_violations_is_read_from_the_message():
    """Another server's INVALID_ARGUMENT may carry a BadRequest with no field violation: the
    node and the reason come from the status message then."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest())
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message="node 1 ('y'): it broke", details=[detail]
    )
    error = translate(StreamedStatus(status))
    assert isinstance(error, GraphError)
    assert (error.node, error.reason) == (1, "it broke")


def test_only_the_memory_budget_s_refusal_suggests_a_larger_budget():
    """A QuotaFailure of another limit, even with an estimate over it, gets no such hint."""

    def refusal(subject: str) -> str:
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=subject, description="refused", quota_value=4
        )
        violation.quota_dimensions["estimate_bytes"] = "9"
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.QuotaFailure(violations=[violation]))
        status = status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED, message="refused", details=[detail]
        )
        return str(translate(StreamedStatus(status)))

    assert refusal("max-memory-mb").endswith("a larger --max-memory-mb")
    assert "max-memory-mb" not in refusal("max-calls-per-connection")
