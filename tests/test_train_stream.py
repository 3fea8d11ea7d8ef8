"""The Train stream: many Evaluate requests over one call, each answered (or failed) alone."""

import asyncio
import logging
import math
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import docs_pages
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from graphs import neuron
from hardening import SlowOp, chain, wait_until
from servers import serving

from bench.train_cpu import MessagesContext
from gradserve.server.engine.plan_cache import PlanCache
from gradserve.server.engine.run import Engine
from gradserve.server.service import train_stream
from gradserve.server.service.admission import MemoryBudget
from gradserve.server.service.app import running_server, start_server
from gradserve.server.service.calls import CallScope, ServerState, call_log
from gradserve.server.service.limits import Limits
from gradserve.server.service.servicer import GradientServicer
from gradserve.server.service.train_stream import MessageScope
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


class Stream:
    """A Train call whose requests are sent one by one, as a test decides."""

    def __init__(self, stub, metadata=()) -> None:
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.responses = stub.Train(iter(self._outbox.get, None), metadata=metadata)

    def send(self, request_id: int, request=None, **fields) -> None:
        self._outbox.put(pb.TrainRequest(id=request_id, request=request, **fields))

    def answer(self) -> pb.TrainResponse:
        return next(self.responses)

    def close(self) -> None:
        self._outbox.put(None)


def status_of(response: pb.TrainResponse) -> status_pb2.Status:
    return status_pb2.Status.FromString(response.status)


def neuron_request(**fields) -> pb.EvaluateRequest:
    graph, _ = neuron()
    return pb.EvaluateRequest(graph=graph.proto(), selection=pb.SELECTION_LEAVES, **fields)


def test_requests_are_answered_in_order_with_their_ids_and_evaluate_s_results(stub):
    unary = stub.Evaluate(neuron_request())
    stream = Stream(stub)
    for request_id in (7, 8, 1_000_000_000_000):
        stream.send(request_id, neuron_request())
        answer = stream.answer()
        assert answer.id == request_id and not answer.status
        assert answer.response == unary  # bit for bit, digest included
    stream.close()
    assert list(stream.responses) == []  # the client half-closed: the stream ends OK
    # The neuron's gradients in closed form: o = tanh(n), do/dn = 1 - o^2 = 0.5.
    o = math.tanh(2.0 * -3.0 + 0.0 * 1.0 + 6.8813735870195432)
    dn = 1 - o * o
    assert list(unary.grads) == pytest.approx([-3.0 * dn, 1.0 * dn, 2.0 * dn, 0.0, dn])


def test_a_failed_request_gets_its_status_and_the_stream_goes_on(stub):
    stream = Stream(stub)
    bad = neuron_request()
    bad.graph.op_names[0] = "sinh"  # not an op the server has
    stream.send(1, bad)
    failed = stream.answer()
    assert failed.id == 1 and not failed.HasField("response")
    status = status_of(failed)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "unknown op 'sinh'" in status.message
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field.startswith("graph.op_names")
    stream.send(2, neuron_request())
    assert stream.answer().response.grads
    stream.close()


def test_a_plan_is_named_by_its_digest_on_the_stream_and_a_lost_one_is_not_found(stub):
    stream = Stream(stub)
    stream.send(1, neuron_request())
    first = stream.answer().response
    graph, _ = neuron()
    by_digest = pb.EvaluateRequest(
        plan_digest=first.plan_digest,
        graph=pb.Graph(leaf_values=graph.leaf_values),
        selection=pb.SELECTION_LEAVES,
    )
    stream.send(2, by_digest)
    assert stream.answer().response == first
    by_digest.plan_digest = bytes(16)
    stream.send(3, by_digest)
    assert status_of(stream.answer()).code == grpc.StatusCode.NOT_FOUND.value[0]
    stream.close()


def test_a_request_past_its_own_deadline_fails_alone(registry):
    slow = SlowOp(seconds=0.05)
    with serving(slow.registry(registry)) as stub:
        stream = Stream(stub)
        stream.send(1, pb.EvaluateRequest(graph=chain("slow", 200).proto()), timeout_ms=200)
        late = stream.answer()
        assert status_of(late).code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert slow.calls < 20  # stopped, not run to the end (200 calls)
        stream.send(2, neuron_request())
        assert stream.answer().response.grads
        stream.close()


def test_a_cancel_message_stops_its_request_and_the_stream_goes_on(registry):
    slow = SlowOp(seconds=0.05)
    with serving(slow.registry(registry)) as stub:
        stream = Stream(stub)
        stream.send(5, pb.EvaluateRequest(graph=chain("slow", 200).proto()))
        assert wait_until(lambda: slow.calls >= 2, timeout=10)
        stream.send(5, cancel=True)
        cancelled = stream.answer()
        assert cancelled.id == 5
        assert status_of(cancelled).code == grpc.StatusCode.CANCELLED.value[0]
        stopped_at = slow.calls
        assert stopped_at < 20
        stream.send(6, neuron_request())
        assert stream.answer().id == 6
        assert slow.calls == stopped_at
        stream.close()


def test_a_waiting_request_that_is_cancelled_is_skipped(registry):
    slow = SlowOp(seconds=0.05)
    with serving(slow.registry(registry)) as stub:
        stream = Stream(stub)
        stream.send(1, pb.EvaluateRequest(graph=chain("slow", 10).proto()))
        assert wait_until(lambda: slow.calls >= 1, timeout=10)
        stream.send(2, pb.EvaluateRequest(graph=chain("slow", 200).proto()))
        stream.send(2, cancel=True)
        first, second = stream.answer(), stream.answer()
        assert first.id == 1 and not first.status
        assert second.id == 2
        assert status_of(second).code == grpc.StatusCode.CANCELLED.value[0]
        assert slow.calls == 10  # the second request never ran
        stream.close()


def test_a_cancel_naming_no_request_on_the_stream_cancels_nothing(registry):
    """Ids above and below the running and the waiting request's: both are answered."""
    slow = SlowOp(seconds=0.05)
    with serving(slow.registry(registry)) as stub:
        stream = Stream(stub)
        stream.send(5, pb.EvaluateRequest(graph=chain("slow", 10).proto()))
        assert wait_until(lambda: slow.calls >= 1, timeout=10)
        stream.send(6, neuron_request())
        stream.send(9, cancel=True)
        stream.send(1, cancel=True)
        running, waiting = stream.answer(), stream.answer()
        assert (running.id, running.status, slow.calls) == (5, b"", 10)
        assert (waiting.id, waiting.status) == (6, b"") and waiting.response.grads
        stream.close()


def test_every_request_is_charged_to_the_budget_and_all_is_given_back(registry):
    with running_server(registry, max_memory_bytes=64 * 2**20) as server:
        budget = server._state.budget
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.GradientServiceStub(channel)
            stream = Stream(stub)
            huge = pb.EvaluateRequest(graph=chain("neg", 3_000_000).proto())
            stream.send(1, huge)
            refused = stream.answer()
            assert status_of(refused).code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            assert "max-memory-mb" in status_of(refused).message
            stream.send(2, neuron_request())
            assert stream.answer().response.grads
            # Nothing is held between requests (the charge goes once the answer is sent).
            assert wait_until(lambda: budget.used == 0, timeout=5)
            stream.close()
            assert list(stream.responses) == []
        assert wait_until(lambda: budget.used == 0 and server._state.active == 0, timeout=5)


def test_the_token_is_checked_once_when_the_stream_opens(registry):
    with (
        running_server(registry, auth_token="s3cret") as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pb_grpc.GradientServiceStub(channel)
        refused = Stream(stub)
        refused.send(1, neuron_request())
        with pytest.raises(grpc.RpcError) as caught:
            refused.answer()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stream = Stream(stub, metadata=[("authorization", "Bearer s3cret")])
        for request_id in range(3):
            stream.send(request_id, neuron_request())
            assert stream.answer().response.grads
        stream.close()


def test_a_message_that_is_not_a_train_request_ends_the_stream(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        train = channel.stream_stream("/gradserve.v1.GradientService/Train")
        with pytest.raises(grpc.RpcError) as caught:
            list(train(iter([b"\xff\xff\xff"])))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_request_that_is_not_an_evaluate_request_fails_alone(server):
    not_a_request = bytes([1 << 3, 9, 2 << 3 | 2, 3, 0xFF, 0xFF, 0xFF])  # id 9, 3 bad bytes
    good = pb.TrainRequest(id=10, request=neuron_request()).SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        train = channel.stream_stream(
            "/gradserve.v1.GradientService/Train",
            response_deserializer=pb.TrainResponse.FromString,
        )
        failed, answered = list(train(iter([not_a_request, good])))
    assert failed.id == 9
    assert status_of(failed).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a valid protobuf message" in status_of(failed).message
    assert answered.id == 10 and answered.response.grads  # the stream went on


def test_a_draining_server_ends_an_idle_stream_unavailable(registry):
    server = start_server(registry)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stream = Stream(pb_grpc.GradientServiceStub(channel))
    stream.send(1, neuron_request())
    assert stream.answer().response.grads
    stopping = threading.Thread(target=server.stop, args=(5,))
    stopping.start()
    with pytest.raises(grpc.RpcError) as caught:
        stream.answer()
    stopping.join()
    channel.close()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def _train_lines(caplog, level: int) -> list[str]:
    call_log.flush()
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level and r.getMessage().startswith("Train ")
    ]


@pytest.mark.usefixtures("fresh_call_log_rates")
def test_a_stream_logs_one_info_line_and_its_requests_at_debug(registry, caplog):
    with caplog.at_level(logging.DEBUG), serving(registry) as stub:
        stream = Stream(stub)
        for request_id in range(3):
            stream.send(request_id, neuron_request())
            assert stream.answer().response.grads
        stream.send(3, neuron_request(nodes=[99]))  # no node 99: a failure, logged at INFO
        assert status_of(stream.answer()).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        stream.close()
        assert list(stream.responses) == []
        assert wait_until(lambda: _train_lines(caplog, logging.INFO), timeout=5)
    failure, summary = _train_lines(caplog, logging.INFO)
    assert failure.startswith("Train nodes=10 status=INVALID_ARGUMENT")
    assert summary.startswith("Train nodes=40 status=OK")  # the neuron's 10 nodes, 4 times
    requests = _train_lines(caplog, logging.DEBUG)
    assert len(requests) == 3 and all(r.startswith("Train nodes=10 status=OK") for r in requests)


def test_the_docs_example_runs_and_prints_the_gradients(target, capsys):
    (example,) = docs_pages.code("docs/training-stream.md", "python")
    exec(example.replace('"localhost:50051"', repr(target)), {})
    # d(a*b)/da = b = 4, d(a*b)/db = a = 3, then the product's own seed.
    assert capsys.readouterr().out.splitlines() == [f"{i} [4.0, 3.0, 1.0]" for i in range(3)]


def test_requests_answered_on_the_event_loop_are_read_without_a_reading_task(registry):
    """A reading task handing each request over would cost every message a turn of the
    loop; it starts only once a request's work leaves the loop (test_a_cancel_message_...
    shows that it then reads cancels)."""
    requests = [
        pb.TrainRequest(id=i, request=neuron_request()).SerializeToString() for i in range(20)
    ]

    async def serve() -> tuple[list[bytes], int]:
        loop = asyncio.get_running_loop()
        tasks = []
        create_task = loop.create_task
        loop.create_task = lambda coro, **kwargs: tasks.append(coro) or create_task(coro, **kwargs)
        with ThreadPoolExecutor(max_workers=1) as executor:
            state = ServerState(Limits(), MemoryBudget(2**30), executor, threads=1)
            state.on_loop()
            ops = {name: loaded.op for name, loaded in registry.items()}
            servicer = GradientServicer(registry, Engine(ops, PlanCache(2**26)), state, 2**26)
            context = MessagesContext(requests)
            await servicer.Train(None, context)
        return context.written, len(tasks)

    written, tasks = asyncio.run(serve())
    answers = [pb.TrainResponse.FromString(w) for w in written]
    assert [a.id for a in answers] == list(range(20))
    assert all(a.response.grads and not a.status for a in answers)
    assert tasks == 0


class DeadlineContext:
    """A Train call's grpc context whose caller's deadline is ``left`` seconds away."""

    def __init__(self, left: float | None) -> None:
        self.left = left

    def time_remaining(self):
        return self.left

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


@pytest.mark.parametrize(
    ("caller_left", "timeout_ms", "expected_left"),
    [
        (None, 0, 7.0),  # neither: the server's default deadline
        (1e10, 0, 7.0),  # grpc's "infinite" deadline is none
        (None, 2_000, 2.0),  # the request's own timeout
        (1e10, 2_000, 2.0),
        (5.0, 0, 5.0),  # the caller's deadline for the stream
        (5.0, 2_000, 2.0),  # whichever comes first
        (5.0, 9_000, 5.0),
    ],
)
def test_a_request_s_deadline_is_its_timeout_within_the_stream_s_or_the_default(
    caller_left, timeout_ms, expected_left
):
    async def deadline_left() -> tuple[float, float, float]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            state = ServerState(Limits(default_deadline_s=7.0), MemoryBudget(2**30), executor, 1)
            state.on_loop()
            stream = CallScope("Train", DeadlineContext(caller_left), state)
            before = time.monotonic()
            stream.deadline = state.limits.caller_deadline(caller_left)  # as serve sets it
            message = train_stream.decode(
                pb.TrainRequest(id=1, timeout_ms=timeout_ms).SerializeToString()
            )
            call = MessageScope(stream, train_stream._Inbox(stream), message)
            return before, call.deadline, time.monotonic()

    before, deadline, after = asyncio.run(deadline_left())
    assert before + expected_left <= deadline <= after + expected_left
