"""The SDK retries UNAVAILABLE through gRPC's own retry policy (gradserve.v1.service_config),
as far as its maxAttempts, and for requests larger than gRPC's default retry buffer too."""

import json
import math
from concurrent import futures

import grpc
import pytest
from graphs import GraphBuilder

from gradserve.client import Client, Value, connect
from gradserve.client.errors import ServerUnavailable
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc
from gradserve.v1.service_config import RETRY_POLICY, SERVICE_CONFIG_JSON


class Flaky(pb_grpc.GradientServiceServicer):
    """Refuses the first ``failures`` calls with UNAVAILABLE, then passes each on to
    a real server; counts the attempts it saw."""

    def __init__(self, upstream: pb_grpc.GradientServiceStub, failures: int) -> None:
        self.upstream, self.failures, self.attempts = upstream, failures, 0

    def _attempt(self, context) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "draining")

    def Evaluate(self, request, context):
        self._attempt(context)
        return self.upstream.Evaluate(request)

    def EvaluateStream(self, request, context):
        self._attempt(context)
        yield from self.upstream.EvaluateStream(request)


@pytest.fixture
def flaky(stub):
    def start(failures: int) -> tuple[Flaky, str]:
        servicer = Flaky(stub, failures)
        server = grpc.server(futures.ThreadPoolExecutor(2))
        pb_grpc.add_GradientServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append(server)
        return servicer, f"127.0.0.1:{port}"

    started: list[grpc.Server] = []
    yield start
    for server in started:
        server.stop(None)


def tanh_of_sum(n: int) -> tuple[Value, list[Value]]:
    xs = [Value(0.001 * i) for i in range(n)]
    return sum(xs[1:], xs[0]).tanh(), xs


def test_the_policy_retries_only_unavailable_with_backoff():
    config = json.loads(SERVICE_CONFIG_JSON)
    assert config["methodConfig"][0]["name"] == [{"service": "gradserve.v1.GradientService"}]
    assert RETRY_POLICY["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert RETRY_POLICY["maxAttempts"] >= 3


def test_a_call_refused_twice_succeeds_on_the_third_attempt(flaky):
    servicer, target = flaky(failures=2)
    loss, xs = tanh_of_sum(3)
    with Client(target, timeout=30) as client:
        client.backward(loss)
    assert servicer.attempts == 3
    t = math.tanh(sum(x.data for x in xs))
    assert [x.grad for x in xs] == pytest.approx([1 - t * t] * 3, rel=1e-12)


def test_a_large_request_is_retried_too(flaky):
    """About 1.6 MB on the wire, beyond gRPC's default 256 KiB retry buffer."""
    servicer, target = flaky(failures=1)
    loss, xs = tanh_of_sum(100_000)
    with Client(target, timeout=60) as client:
        client.backward(loss)
    assert servicer.attempts == 2
    t = math.tanh(sum(x.data for x in xs))
    assert xs[-1].grad == pytest.approx(1 - t * t, rel=1e-9)


def test_retries_stop_at_max_attempts(flaky):
    servicer, target = flaky(failures=100)
    loss, _ = tanh_of_sum(3)
    with Client(target, timeout=30) as client, pytest.raises(ServerUnavailable):
        client.backward(loss)
    assert servicer.attempts == RETRY_POLICY["maxAttempts"]


def test_more_calls_at_once_than_a_connection_has_streams_all_succeed(target):
    """Three rounds of 200 calls at once on one channel, where the server lets a connection
    have 64 streams: grpc holds the others until a stream is free. grpc core counts a call
    against the 64 until the server has let go of it, a moment after its status reached
    the client, so it may refuse the stream opened in that moment (REFUSED_STREAM, seen as
    UNAVAILABLE): 8-17% of such calls on a channel without the SDK's options (BENCHMARKS.md,
    "What ended the abusers' calls UNAVAILABLE"). The SDK's retry policy sends them again."""
    g = GraphBuilder()
    g.op("mul", g.leaf(3.0), g.leaf(4.0))
    request = pb.EvaluateRequest(graph=g.proto())
    channel, stub = connect(target)
    with channel:
        for _ in range(3):
            calls = [stub.Evaluate.future(request, timeout=60) for _ in range(200)]
            replies = [call.result() for call in calls]
            assert {(tuple(r.values), tuple(r.grads)) for r in replies} == {((3, 4, 12), (4, 3, 1))}
