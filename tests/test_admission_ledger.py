"""The memory ledger over whole calls: whatever a sequence of calls does (succeeds, fails,
is cancelled, passes its deadline, is not found, streams), the budget is back at 0 once
their threads have ended, and a call its client gave up on stays charged while its thread
still runs (its arrays are still alive). Read from the server's own gauge,
gradserve_memory_budget_used_bytes, on its metrics endpoint."""

import gc
import random
import time
import tracemalloc
from typing import NamedTuple

import grpc
import numpy as np
import pytest
from graphs import neuron
from hardening import SlowOp, chain, wait_until
from metered import metered_server, sample, scrape
from resilience import repeated_nodes

from bench.arriving_live import in_use_mib
from bench.h2_client import H2GrpcClient
from gradserve.server.engine import memory
from gradserve.server.service import evaluation
from gradserve.server.service.app import running_server
from gradserve.server.service.calls import CallScope
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

GAUGE = "gradserve_memory_budget_used_bytes"


def used(metrics_port: int) -> float:
    return sample(scrape(metrics_port), GAUGE)


def ok(stub) -> grpc.StatusCode:
    stub.Evaluate(pb.EvaluateRequest(graph=neuron()[0].proto()), timeout=30)
    return grpc.StatusCode.OK


def streamed(stub) -> grpc.StatusCode:
    request = pb.EvaluateRequest(graph=chain("tanh", 300).proto(), chunk_size=64)
    assert sum(len(c.node_ids) for c in stub.EvaluateStream(request, timeout=30)) == 301
    return grpc.StatusCode.OK


def invalid(stub) -> grpc.StatusCode:
    graph = neuron()[0].proto()
    graph.input_ids[0] = 99  # not an earlier node
    return code_of(lambda: stub.Evaluate(pb.EvaluateRequest(graph=graph), timeout=30))


def not_found(stub) -> grpc.StatusCode:
    request = pb.EvaluateRequest(plan_digest=bytes(16), graph=pb.Graph(leaf_values=[1.0]))
    return code_of(lambda: stub.Evaluate(request, timeout=30))


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def gated(rows: int = 2) -> pb.EvaluateRequest:
    """Through the gate op, with rows (the array path, on an evaluation thread)."""
    graph = chain("slow", 2).proto()
    del graph.leaf_values[:]
    graph.leaf_values.extend(np.linspace(0.1, 0.9, rows).tolist())
    return pb.EvaluateRequest(graph=graph, rows=rows)


@pytest.fixture
def gate():
    gate = SlowOp(seconds=60)
    yield gate
    gate.release.set()


@pytest.fixture
def charges(monkeypatch) -> list[int]:
    """Every charge the calls ask of the budget (``CallScope.admit``), in order."""
    recorded = []
    admit = CallScope.admit

    async def recording(self, nbytes: int) -> None:
        recorded.append(nbytes)
        await admit(self, nbytes)

    monkeypatch.setattr(CallScope, "admit", recording)
    return recorded


@pytest.mark.parametrize("seed", range(3))
def test_the_budget_is_back_at_zero_after_any_sequence_of_calls(registry, gate, seed):
    kinds = [ok, streamed, invalid, not_found] * 3
    random.Random(seed).shuffle(kinds)
    with (
        metered_server(gate.registry(registry)) as (server, metrics_port),
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pb_grpc.GradientServiceStub(channel)
        expected = {ok: "OK", streamed: "OK", invalid: "INVALID_ARGUMENT"}
        expected[not_found] = "NOT_FOUND"
        for kind in kinds[:6]:
            assert kind(stub).name == expected[kind]
        # Two calls the client gives up on while their threads are held in the gate:
        # one past its deadline, one cancelled.
        late = code_of(lambda: stub.Evaluate(gated(), timeout=0.5))
        assert late == grpc.StatusCode.DEADLINE_EXCEEDED
        cancelled = stub.Evaluate.future(gated(rows=3))
        assert wait_until(lambda: gate.calls >= 2, 30)
        assert cancelled.cancel()
        for kind in kinds[6:]:
            assert kind(stub).name == expected[kind]
        # Their threads still run: what they allocated is still charged.
        assert used(metrics_port) > 0
        gate.release.set()
        assert wait_until(lambda: used(metrics_port) == 0, 30), used(metrics_port)


@pytest.mark.parametrize("nodes", [30, 20_000])
def test_a_graph_s_charge_before_compiling_covers_its_request_and_compiling(
    registry, charges, nodes, monkeypatch
):
    """Before compiling, a call sending its graph holds at least its request message and
    what compiling it takes (``memory.compile_bytes``, checked against the measured peak in
    test_resilience_estimate); its first charge, while the message is decoded, holds at
    least the message. A small request (compiled inline) and a large one."""
    request = pb.EvaluateRequest(graph=chain("tanh", nodes).proto())
    graph = request.graph
    sizes = (len(graph.node_ops), len(graph.input_ids), len(graph.labels))
    compiling = memory.compile_bytes(*sizes, request.ByteSize())
    charges_when_compiling = []
    compile_plan = evaluation.Evaluator.compile

    def compiling_plan(self, *args):
        charges_when_compiling.append(len(charges))
        return compile_plan(self, *args)

    monkeypatch.setattr(evaluation.Evaluator, "compile", compiling_plan)
    with (
        running_server(registry) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        pb_grpc.GradientServiceStub(channel).Evaluate(request, timeout=60)
    [made] = charges_when_compiling
    decoding, before_compiling = charges[0], charges[made - 1]
    assert decoding >= request.ByteSize()
    assert before_compiling >= compiling + request.ByteSize() > compiling > 0


@pytest.mark.parametrize("method", ["Evaluate", "EvaluateStream"])
def test_a_plan_found_in_the_cache_is_looked_up_without_compiling_s_charge(
    registry, charges, monkeypatch, method
):
    """A large call whose plan is cached holds, while it finds it, its request and the
    lookup's arrays (``lookup_cost``), not what compiling would take: the first call
    compiles holding both, the second never compiles nor holds compiling's charge."""
    request = pb.EvaluateRequest(graph=chain("tanh", 20_000).proto())
    assert request.ByteSize() > evaluation.SMALL_REQUEST_BYTES  # planned on a thread
    compiling = evaluation.compile_cost(request, request.ByteSize())
    finding = evaluation.lookup_cost(request)
    assert finding < compiling / 2
    steps = []  # (step, the number of charges made when it ran)
    for name in ("find", "compile"):
        step = getattr(evaluation.Evaluator, name)

        def recording(self, *args, _name=name, _step=step):
            steps.append((_name, len(charges)))
            return _step(self, *args)

        monkeypatch.setattr(evaluation.Evaluator, name, recording)
    with (
        running_server(registry) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        call = channel.unary_unary if method == "Evaluate" else channel.unary_stream
        for _ in range(2):
            replies = call(f"/gradserve.v1.GradientService/{method}")(
                request.SerializeToString(), timeout=60
            )
            assert replies if method == "Evaluate" else list(replies)
    [(_, cold), (_, compiled), (_, hot)] = steps
    assert [name for name, _ in steps] == ["find", "compile", "find"]
    assert finding <= charges[cold - 1] - charges[cold - 2] < compiling  # beyond the request
    assert charges[compiled - 1] >= charges[cold - 1] + compiling
    assert charges[hot - 1] == charges[cold - 1]  # the same lookup, and nothing more


@pytest.mark.parametrize("rows", [1, 2])
def test_a_unary_reply_is_charged_twice_while_grpc_sends_it(registry, charges, rows):
    """Once its reply is encoded, an Evaluate holds two copies of the reply (the server's
    and grpc's, both resident until a reader takes it; its request is let go), whether the
    engine answered it whole (one row: no evaluation job) or a job evaluated it. A reader
    that never reads otherwise holds memory that is not charged (BENCHMARKS.md, "Where the
    memory over the ledger is")."""
    request = repeated_nodes(20_000, rows)
    with (
        running_server(registry) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        reply = channel.unary_unary("/gradserve.v1.GradientService/Evaluate")(
            request.SerializeToString(), timeout=60
        )
    assert len(reply) > 20_000 * 8 * rows  # a value per selected node and row at least
    assert charges[-1] >= 2 * len(reply), (charges, len(reply))


@pytest.fixture
def traced_calls(monkeypatch):
    """tracemalloc's count (current and peak, since the last charge) and malloc's (in
    MiB: ``in_use_mib``) as each charge is made and as each reply message is handed to
    grpc: ``(kind, nbytes, current, peak, malloc's)`` in order, kind "charge" or "send"."""
    marks = []
    admit, send = CallScope.admit, CallScope.send

    async def charging(self, nbytes: int) -> None:
        await admit(self, nbytes)
        marks.append(("charge", nbytes, *tracemalloc.get_traced_memory(), in_use_mib()))
        tracemalloc.reset_peak()

    async def sending(self, message: bytes) -> None:
        current, peak = tracemalloc.get_traced_memory()
        marks.append(("send", len(message), current, peak, in_use_mib()))
        await send(self, message)

    monkeypatch.setattr(CallScope, "admit", charging)
    monkeypatch.setattr(CallScope, "send", sending)
    return marks


def _until_the_first_chunk_waits(
    port: int, raw: bytes, traced_calls, method: str = "EvaluateStream"
) -> int:
    """Start a call of ``raw`` (an EvaluateStream unless told) from a client that never
    opens its window, with tracemalloc on until its first reply message is handed to grpc
    (and waits); tracemalloc's count before it started."""
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        with H2GrpcClient(port, window=0) as client:
            stream_id = client.start_call(f"/gradserve.v1.GradientService/{method}", raw)
            waiting = client.pump(
                lambda: any(kind == "send" for kind, *_ in traced_calls), time.monotonic() + 60
            )
            assert waiting and not client.streams[stream_id].finished, traced_calls
    finally:
        tracemalloc.stop()
    return baseline


def _node_zero_repeated() -> pb.EvaluateRequest:
    return repeated_nodes(1_000_000)


def _last_of_a_chain_repeated() -> pb.EvaluateRequest:
    """The last node of a 1,000-step chain, a million times: ids above 256, each an int
    object of its own when read from the request."""
    return pb.EvaluateRequest(graph=chain("neg", 1_000).proto(), nodes=[1_000] * 1_000_000)


@pytest.mark.parametrize("selection", [_node_zero_repeated, _last_of_a_chain_repeated])
def test_a_stream_answered_whole_holds_no_more_than_its_charge(registry, traced_calls, selection):
    """EvaluateStream of one node selected a million times in one row: the engine answers
    it whole (no evaluation job), and a client that never opens its window leaves the
    first chunk waiting. What the call holds then (Python objects, counted by tracemalloc)
    is within its charge, and the charge is within 3x of the peak it covers (the answer,
    building the chunk). Before, the engine's answer (the ids, values and gradients of a
    million results as Python lists, about 24 MB) was held the whole stream through,
    against 3.8 MiB charged. The request message, in protobuf's arena (which tracemalloc
    does not see), is let go once the call is answered: its ids are copied out of it."""
    first_wait = _first_wait_of_warm_stream(registry, selection(), traced_calls)
    assert first_wait.chunk_bytes > 1_000_000 // 16  # a chunk of many results, not of one
    assert first_wait.held <= first_wait.charge, first_wait
    assert first_wait.peak <= first_wait.charge <= 3 * first_wait.peak, first_wait


class FirstWait(NamedTuple):
    """A stream's first chunk waiting for a reader: the charge then, the chunk's size,
    and what the call holds and its peak (tracemalloc) and holds by malloc's count (in
    bytes), each above what was held before the call."""

    charge: int
    chunk_bytes: int
    held: int
    peak: int
    malloc_held: float


def _first_wait_of_warm_stream(
    registry, request: pb.EvaluateRequest, traced_calls, method: str = "EvaluateStream"
) -> FirstWait:
    """Serve ``request`` (an EvaluateStream unless told) to a client that never reads,
    its plan and program compiled beforehand, until its first reply message waits."""
    raw = request.SerializeToString()
    with running_server(registry) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.GradientServiceStub(channel)
            warm = pb.EvaluateRequest(graph=request.graph, nodes=[0], rows=request.rows)
            for _ in range(2):  # a structure's second call compiles its program
                stub.Evaluate(warm, timeout=60)
        gc.collect()
        malloc_before = in_use_mib()
        del traced_calls[:]
        baseline = _until_the_first_chunk_waits(server.port, raw, traced_calls, method)
    first_send = next(i for i, (kind, *_) in enumerate(traced_calls) if kind == "send")
    _, charge, _, _, _ = traced_calls[first_send - 1]
    _, chunk_bytes, held, peak, malloc_held = traced_calls[first_send]
    malloc_growth = (malloc_held - malloc_before) * 2**20
    return FirstWait(charge, chunk_bytes, held - baseline, peak - baseline, malloc_growth)


def test_a_stream_waiting_for_its_reader_holds_no_more_than_its_lowered_charge(
    registry, traced_calls
):
    """A stream over many rows (an evaluation job) whose client never opens its window:
    once its block is evaluated, its charge drops from the evaluation's to its results
    and a chunk, and what it holds while the first chunk waits (tracemalloc: the job's
    arrays, the block's results, the chunk) is within that lowered charge."""
    rows = 4_000
    xs = np.linspace(-1, 1, rows)
    request = pb.EvaluateRequest(graph=chain("neg", 60).proto(), rows=rows)
    request.graph.leaf_values[:] = xs.tolist()
    raw = request.SerializeToString()
    with running_server(registry) as server:
        baseline = _until_the_first_chunk_waits(server.port, raw, traced_calls)
    first_send = next(i for i, (kind, *_) in enumerate(traced_calls) if kind == "send")
    charges = [nbytes for kind, nbytes, *_ in traced_calls[:first_send] if kind == "charge"]
    evaluating, lowered = charges[-2:]
    _, _, held, _, _ = traced_calls[first_send]
    results = 16 * 61 * rows  # values and gradients of every node and row
    assert results < held - baseline <= lowered < evaluating / 2, (held, lowered, evaluating)


@pytest.mark.parametrize(
    ("method", "ids", "rows"),
    [
        ("EvaluateStream", 2_000_000, 1),
        ("EvaluateStream", 2_000_000, 2),
        ("Evaluate", 2_000_000, 1),
        ("Evaluate", 1_000_000, 2),  # a reply of two million results fits max-message-mb
    ],
)
def test_a_call_waiting_for_its_reader_has_let_go_of_its_request_message(
    registry, traced_calls, method, ids, rows
):
    """Once its answer (one row) or its job (two) is made, a call holds none of its request
    message: protobuf's arena, outside tracemalloc's view, 8 MiB a million selected ids.
    While the first reply message (a stream's chunk, or the unary reply) of a call whose
    client never reads is handed to grpc, what malloc holds for the call beyond what
    tracemalloc sees (the arrays, the message) is less than half the request message, and
    what tracemalloc sees is within the call's charge. Before, the job (``Job.request``),
    the answer (the request's ids) and the servicer kept it."""
    request = repeated_nodes(ids, rows)
    message = evaluation.request_bytes(request)
    assert message >= 8 * 2**20
    first_wait = _first_wait_of_warm_stream(registry, request, traced_calls, method)
    untraced = first_wait.malloc_held - first_wait.held
    assert first_wait.held <= first_wait.charge, first_wait
    assert untraced < message / 2, (untraced, first_wait, message)


def test_a_small_stream_answered_whole_is_charged_its_results_not_a_whole_chunk(registry, charges):
    """A 10-node stream the engine answers whole holds ten results at a time, not the
    65,536 a chunk may hold: its charge while it sends is its answer and ten results."""
    request = pb.EvaluateRequest(graph=neuron()[0].proto(), selection=pb.SELECTION_ALL)
    with (
        running_server(registry) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        chunks = list(pb_grpc.GradientServiceStub(channel).EvaluateStream(request, timeout=30))
    assert [len(chunk.node_ids) for chunk in chunks] == [10]
    answer = evaluation.ANSWER_BYTES_PER_LISTED_ID * 10 + evaluation.ANSWER_BYTES_PER_NODE * 10
    assert charges[-1] == answer + evaluation.answer_chunk_bytes(10), charges
