"""The SDK's requests ride one Train stream per Client and graph structure, and fail, time
out and fall back as unary calls would."""

import math
import threading
from concurrent import futures

import grpc
import pytest
from hardening import SlowOp

from gradserve.client import Client, DeadlineExceeded, GraphError, ServerError, Value
from gradserve.client.train_stream import TrainStreams
from gradserve.ops import Op
from gradserve.server.registry import LoadedOp
from gradserve.server.service.app import running_server
from gradserve.v1 import gradserve_pb2 as pb


class _CountingChannel:
    """A channel whose Train streams, once opened, add one to ``opened``."""

    def __init__(self, channel: grpc.Channel, opened: list) -> None:
        self._channel, self._opened = channel, opened

    def stream_stream(self, *args, **kwargs):
        open_call = self._channel.stream_stream(*args, **kwargs)

        def counted(*call_args, **call_kwargs):
            self._opened.append(1)
            return open_call(*call_args, **call_kwargs)

        return counted


def count_opens(client: Client) -> list:
    """A list that grows by one each time the client opens a Train stream (one per graph
    structure it sends)."""
    opened: list = []
    client._train._channel = _CountingChannel(client._train._channel, opened)
    return opened


def neuron(x1: float):
    x = [Value(x1, "x1"), Value(0.0, "x2")]
    w = [Value(-3.0, "w1"), Value(1.0, "w2")]
    b = Value(6.8813735870195432, "b")
    return x, w, b, (x[0] * w[0] + x[1] * w[1] + b).tanh()


def test_a_training_loop_s_steps_share_one_stream_with_unary_results(target):
    with Client(target) as streamed, Client(target, train_stream=False) as unary:
        opened = count_opens(streamed)
        for step in range(5):
            x, w, b, o = neuron(2.0 + step / 10)
            o.backward(streamed)
            mine = [o.data, *(v.grad for v in (*x, *w, b))]
            o.backward(unary)
            assert mine == [o.data, *(v.grad for v in (*x, *w, b))]  # bit for bit
            t = math.tanh(x[0].data * -3.0 + 6.8813735870195432)  # the closed form
            assert o.data == pytest.approx(t) and b.grad == pytest.approx(1 - t * t)
        assert opened == [1]


def test_a_failed_request_raises_its_error_and_the_stream_goes_on(target):
    with Client(target) as client:
        opened = count_opens(client)
        x = Value(-1.0, "x")
        y = x.log()  # outside log's domain
        with pytest.raises(GraphError) as caught:
            y.backward(client)
        assert caught.value.node is not None and "log" in str(caught.value)
        z = x.log() * 1.0  # the failed structure, and more: a stream of its own
        x.data = 2.0
        y = x.log()  # the failed structure again, on its stream, which went on
        y.backward(client)
        assert (y.data, x.grad) == (math.log(2.0), 0.5)
        z.backward(client)
        assert x.grad == 0.5
        assert opened == [1, 1]


def test_a_request_past_the_client_s_timeout_raises_and_the_next_works(registry):
    slow = SlowOp(seconds=0.05)
    with (
        running_server(slow.registry(registry)) as server,
        Client(f"127.0.0.1:{server.port}", timeout=0.3) as client,
    ):
        x = Value(0.5)
        y = x
        for _ in range(100):  # about 5 s of work
            y = y.apply("slow")
        with pytest.raises(DeadlineExceeded):
            y.backward(client)
        assert slow.calls < 20
        z = x * 3.0
        z.backward(client)
        assert x.grad == 3.0


class EvaluateOnly:
    """A server of the protocol's unary Evaluate only (no Train), forwarding to a real one."""

    def __init__(self, stub) -> None:
        self.stub = stub
        self.calls = 0

    def Evaluate(self, request, context):
        self.calls += 1
        return self.stub.Evaluate(request)


def serve_only(method: str, handler) -> tuple[grpc.Server, int]:
    """A server of one of the protocol's methods, started on a free port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("gradserve.v1.GradientService", {method: handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_a_server_without_train_is_called_unary(stub):
    forwarding = EvaluateOnly(stub)
    old, port = serve_only(
        "Evaluate",
        grpc.unary_unary_rpc_method_handler(
            forwarding.Evaluate,
            request_deserializer=pb.EvaluateRequest.FromString,
            response_serializer=pb.EvaluateResponse.SerializeToString,
        ),
    )
    try:
        with Client(f"127.0.0.1:{port}") as client:
            for step in range(3):
                x = Value(float(step))
                (x * x).backward(client)
                assert x.grad == 2.0 * step
        assert forwarding.calls == 3  # the first after UNIMPLEMENTED, then straight away
        assert client._train.unsupported
    finally:
        old.stop(0)


def test_two_threads_share_a_client_one_on_the_stream_one_by_calls(target):
    with Client(target) as client:

        def step(seed: float) -> float:
            x = Value(seed)
            (x * x * x).backward(client)
            return x.grad

        with futures.ThreadPoolExecutor(max_workers=4) as pool:
            grads = list(pool.map(step, [float(i) for i in range(40)]))
        assert grads == [3.0 * i * i for i in range(40)]


def test_the_bearer_token_opens_the_stream(registry):
    with (
        running_server(registry, auth_token="s3cret") as server,
        Client(f"127.0.0.1:{server.port}", metadata=[("authorization", "Bearer s3cret")]) as ok,
    ):
        x = Value(3.0)
        (x * x).backward(ok)
        assert x.grad == 6.0
        assert not ok._train.unsupported
        assert [s._responses is not None for s in ok._train._streams.values()] == [True]


class Unanswering:
    """A server whose Train takes every message and answers none; ``received`` counts them
    and ``release`` ends its calls."""

    def __init__(self) -> None:
        self.received = 0
        self.release = threading.Event()

    def Train(self, requests, context):
        for _ in requests:
            self.received += 1
            if self.release.wait(60):
                return
        yield from ()


def test_a_request_never_answered_on_the_stream_fails_with_the_client_s_timeout():
    never = Unanswering()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {"Train": grpc.stream_stream_rpc_method_handler(never.Train)}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("gradserve.v1.GradientService", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=0.2) as client:
            opened = count_opens(client)
            x = Value(3.0)
            for attempt in (1, 2):
                with futures.ThreadPoolExecutor(max_workers=1) as step:
                    # the same structure each time, so its stream; a client that waited
                    # for ever would fail here, at the generous guard, instead of hanging
                    done = step.submit((x * x).backward, client)
                    with pytest.raises(DeadlineExceeded) as caught:
                        done.result(timeout=60)
                assert "timeout of 0.2 s" in str(caught.value)
                assert caught.value.timeout == 0.2
                assert never.received == attempt  # it was sent on the stream, and not again
                assert opened == [1] * attempt  # the overdue stream was ended; a new one
            assert x.grad == 0.0  # nothing was filled
    finally:
        never.release.set()
        server.stop(0)


class CountedWaits(threading.Condition):
    """A condition that counts how often a thread waited on it (each wait is a wake-up)."""

    waits = 0

    def wait(self, timeout=None):
        self.waits += 1
        return super().wait(timeout)


def test_the_timeout_watch_does_not_wake_for_every_request(target):
    with Client(target, timeout=600) as client:
        watch = client._train._overdue
        watch._changed = counted = CountedWaits()
        x = Value(2.0)
        for step in range(50):
            x.data = float(step)
            (x * x).backward(client)
            assert x.grad == 2.0 * step
        assert counted.waits <= 3  # once to start, then only when a due time passes


def test_only_the_most_recently_used_structures_keep_their_stream_open(target):
    def step(length: int) -> None:
        y = x = Value(0.5)
        for _ in range(length):
            y = y.tanh()
        y.backward(client)
        assert x.grad != 0.0

    structures = TrainStreams.MAX_OPEN + 2
    with Client(target) as client:
        opened = count_opens(client)
        for length in (1, 2, 1, 2):  # fewer than MAX_OPEN: both stay open
            step(length)
        assert len(opened) == 2
        for length in range(3, structures + 1):
            step(length)
        assert len(opened) == structures
        step(structures)  # the most recently used: still open
        assert len(opened) == structures
        step(1)  # the least recently used: closed when the streams past MAX_OPEN were opened
        assert len(opened) == structures + 1


@pytest.mark.parametrize("shift", [-1, 1])
def test_an_answer_to_another_request_is_an_internal_error(shift):
    """A Train that answers each message with another request's id."""
    server, port = serve_only(
        "Train",
        grpc.stream_stream_rpc_method_handler(
            lambda requests, context: (pb.TrainResponse(id=r.id + shift) for r in requests),
            request_deserializer=pb.TrainRequest.FromString,
            response_serializer=pb.TrainResponse.SerializeToString,
        ),
    )
    try:
        with Client(f"127.0.0.1:{port}") as client, pytest.raises(ServerError) as caught:
            (Value(2.0) * 3.0).backward(client)
    finally:
        server.stop(0)
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert f"the Train stream answered request {1 + shift}, not 1" in str(caught.value)


def test_a_request_finding_its_stream_busy_goes_unary_without_waiting(registry):
    """One thread's request holds the stream (its op waits on a gate); another thread's
    request of the same structure is answered by a unary call while the gate is shut."""
    entered, gate, calls = threading.Event(), threading.Event(), []

    def forward(x):
        calls.append(1)
        if len(calls) == 1:
            entered.set()
            gate.wait(20)
        return x.copy()

    op = Op("gated", 1, forward=forward, backward=lambda g, y, x: (g.copy(),))
    gated = {**registry, "gated": LoadedOp(op, "gated", "tests", "0")}
    with (
        running_server(gated) as server,
        Client(f"127.0.0.1:{server.port}") as client,
        futures.ThreadPoolExecutor(max_workers=1) as pool,
    ):
        first = Value(1.0)
        held = pool.submit((first.apply("gated") * 2.0).backward, client)
        assert entered.wait(20)
        second = Value(5.0)
        (second.apply("gated") * 2.0).backward(client)
        assert second.grad == 2.0 and not held.done()
        gate.set()
        held.result(timeout=20)
        assert first.grad == 2.0
