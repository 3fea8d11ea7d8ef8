"""A stream whose reader stops reading gives its memory back while it waits (issue 19).

grpc.aio cannot end a call whose write waits for its reader, so an EvaluateStream's
handler stays in its write; what it keeps between writes lives in ``calls.Held``, which
the call empties once the write has waited ``--stream-stall-timeout`` while other calls
wait for memory. Its charge then drops to the message grpc is writing (two copies), and
when the write returns the call ends RESOURCE_EXHAUSTED naming the setting. A reader that
takes each chunk within the stall timeout loses nothing, and a stalled one keeps all
while no call waits for memory.

These tests drive ``CallScope`` with a grpc context whose writes complete when the test
says so, and a real budget with a real call waiting for it."""

import asyncio
import gc
import time
import tracemalloc
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import numpy as np
import pytest
from hardening import wait_until
from resilience import EVALUATE_STREAM, HANG_S, repeated_nodes

from bench.arriving_live import in_use_mib
from bench.h2_client import H2GrpcClient
from gradserve.server.service import evaluation
from gradserve.server.service.admission import MemoryBudget
from gradserve.server.service.app import running_server
from gradserve.server.service.calls import (
    CallScope,
    Held,
    SendTimedOut,
    ServerState,
    StreamStalled,
)
from gradserve.server.service.large_calls import share_large_calls
from gradserve.server.service.limits import Limits
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

STALL_S = 0.2
BUDGET = 1_000_000
CHUNK = b"c" * 1_000
HELD_CHARGE = 600_000  # the stream's request, job and results, as charged


class Context:
    """A call's grpc context whose writes wait until ``reader`` lets them through."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reader = asyncio.Event()
        self.reader.set()

    async def write(self, message: bytes) -> None:
        await self.reader.wait()
        self.written.append(message)

    def time_remaining(self):
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def _state(send_timeout_s: float = 600.0) -> ServerState:
    state = ServerState(
        limits=Limits(),
        budget=MemoryBudget(BUDGET),
        executor=ThreadPoolExecutor(max_workers=1),
        threads=1,
        send_timeout_s=send_timeout_s,
        stall_s=STALL_S,
    )
    state.on_loop()
    return state


class Work:
    """Stands for a job: what the call must let go of."""


async def _stream(state: ServerState, chunks: int) -> tuple[CallScope, Context]:
    context = Context()
    call = CallScope("EvaluateStream", context, state)
    await call.admit(HELD_CHARGE)
    call.held = Held(Work())
    call.held.chunks = iter([CHUNK] * chunks)
    return call, context


async def _waiting_for_memory(budget: MemoryBudget) -> asyncio.Task:
    """Another call, waiting for more of the budget than is free (and refused after 5 s)."""
    waiter = asyncio.create_task(budget.charge().resize(BUDGET // 2, time.monotonic() + 60))
    while not budget.waiting:
        await asyncio.sleep(0)
    return waiter


def test_a_stalled_stream_lets_go_of_all_but_its_chunk_when_memory_is_wanted():
    async def stalled():
        state = _state()
        call, context = await _stream(state, chunks=3)
        context.reader.clear()  # the reader stops after nothing
        sending = asyncio.create_task(call.send_held())
        waiter = await _waiting_for_memory(state.budget)
        held = call.held
        started = time.monotonic()
        while held.work is not None:
            await asyncio.sleep(0.01)
        waited = time.monotonic() - started
        charge = call.charge.bytes
        # The charge given back goes to the call waiting for it.
        await asyncio.wait_for(waiter, 5)
        used = state.budget.used
        context.reader.set()  # the reader comes back: the chunk, then the status
        with pytest.raises(StreamStalled):
            await sending
        code = call._status_of(StreamStalled()).code.name
        return held, charge, used, len(context.written), waited, code, call.note

    held, charge, used, written, waited, code, note = asyncio.run(stalled())
    assert held.work is None and held.chunks is None
    assert charge == 2 * len(CHUNK)  # the chunk grpc writes: its copy and the server's
    assert used == 2 * len(CHUNK) + BUDGET // 2
    assert written == 1  # the chunk in flight reached the reader, and no other
    assert waited < STALL_S + 1  # the stall timeout, not the send timeout (600 s)
    assert code == "RESOURCE_EXHAUSTED" and note == "stream stalled"


def test_a_stalled_stream_in_the_large_calls_share_lets_go_when_a_large_call_waits_for_it():
    """The stream's charge is large (more than an eighth of the budget), so it is held in
    the large calls' share too (alone, more than the share's half). Another large call
    waits for the share, though the budget has room for it: the stalled stream lets go
    of all but its chunk, and the other call gets the share. (Looking at the budget's
    waiters alone, the stream kept all and the other call was refused after its wait.)"""

    async def stalled():
        state = _state()
        share = share_large_calls(state.budget)
        call, context = await _stream(state, chunks=3)
        context.reader.clear()
        sending = asyncio.create_task(call.send_held())
        other = state.budget.charge()
        waiter = asyncio.create_task(other.resize(BUDGET // 4, time.monotonic() + 60))
        while not share.waiting:
            await asyncio.sleep(0)
        budget_waiters = state.budget.waiting
        await asyncio.wait_for(waiter, 5)
        charge = call.charge.bytes
        context.reader.set()
        with pytest.raises(StreamStalled):
            await sending
        return budget_waiters, charge, share.used, other.bytes, call.note

    budget_waiters, charge, share_used, other, note = asyncio.run(stalled())
    assert budget_waiters == 0  # it waited for the share only
    assert charge == 2 * len(CHUNK) and note == "stream stalled"
    assert share_used == other == BUDGET // 4


def test_a_stalled_stream_keeps_all_while_no_call_waits_for_memory():
    """Past the stall timeout, a stream keeps what it holds while nobody wants it; once a
    call waits for memory, the watch (looking every STALL_POLL_S) lets go."""

    async def stalled():
        state = _state()
        call, context = await _stream(state, chunks=2)
        context.reader.clear()
        sending = asyncio.create_task(call.send_held())
        await asyncio.sleep(3 * STALL_S)
        kept = call.held.work is not None, call.charge.bytes
        waiter = await _waiting_for_memory(state.budget)
        await asyncio.wait_for(waiter, 5)
        context.reader.set()
        with pytest.raises(StreamStalled):
            await sending
        return kept, call.held.work

    (still_held, charge), work = asyncio.run(stalled())
    assert still_held and charge == HELD_CHARGE
    assert work is None


def test_a_reader_that_reads_within_the_stall_timeout_gets_every_chunk():
    """Each chunk is taken after half the stall timeout, with a call waiting for memory
    all along: the stream sends all of them, and keeps what it holds."""

    async def slow():
        state = _state()
        call, context = await _stream(state, chunks=6)
        context.reader.clear()
        waiter = await _waiting_for_memory(state.budget)
        sending = asyncio.create_task(call.send_held())
        while not sending.done():
            await asyncio.sleep(STALL_S / 2)
            context.reader.set()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            context.reader.clear()
        await sending
        still_waiting = state.budget.waiting
        waiter.cancel()
        return len(context.written), call.note, call.charge.bytes, still_waiting

    written, note, charge, waiting = asyncio.run(slow())
    assert (written, note, charge) == (6, "", HELD_CHARGE)
    assert waiting == 1  # the other call waited throughout


def test_a_stream_abandoned_by_the_send_timeout_lets_go_too():
    """With no call waiting for memory, the send timeout still abandons the stream, and it
    gives back all but the chunk being written as well (CANCELLED, as any call)."""

    async def stalled():
        state = _state(send_timeout_s=STALL_S)
        call, context = await _stream(state, chunks=2)
        context.reader.clear()
        sending = asyncio.create_task(call.send_held())
        while call.note != "send timeout":
            await asyncio.sleep(0.01)
        charge, work = call.charge.bytes, call.held.work
        context.reader.set()
        with pytest.raises(SendTimedOut):
            await sending
        return charge, work

    charge, work = asyncio.run(stalled())
    assert charge == 2 * len(CHUNK) and work is None


# Through a real server, with raw HTTP/2 readers whose flow-control window the test opens ---

SELECTED = 1_000_000  # node 0 a million times: a request of a megabyte, 7.5 MiB parsed
ROWS = 2  # over two rows: an evaluation job, whose selected ids are an array of 8 MB


def _messages(data: bytes) -> list[bytes]:
    """The gRPC messages in a stream's DATA (each length-prefixed), the last whole one."""
    messages, at = [], 0
    while at + 5 <= len(data):
        length = int.from_bytes(data[at + 1 : at + 5], "big")
        if at + 5 + length > len(data):
            break
        messages.append(data[at + 5 : at + 5 + length])
        at += 5 + length
    return messages


def _check_chunks(messages: list[bytes], rows: int = ROWS) -> int:
    """Every chunk of node 0 (x, and y = -x) right by closed forms: value x = 0.5 + r in
    row r, gradient d y / d x = -1; the results counted."""
    xs = 0.5 + np.arange(rows)
    results = 0
    for message in messages:
        chunk = pb.GradientChunk.FromString(message)
        ids = np.array(chunk.node_ids)
        assert (ids == 0).all()
        rows, first = chunk.rows, chunk.first_row
        values = np.array(chunk.values).reshape(rows, len(ids))
        np.testing.assert_array_equal(values, np.outer(xs[first : first + rows], np.ones(len(ids))))
        np.testing.assert_array_equal(np.array(chunk.grads), -1.0)
        results += len(ids) * rows
    return results


@contextmanager
def _budget_wanted(server):
    """A call of the server's waiting for its whole calls' budget the while: other calls
    want memory (it waits up to 60 s, never fitting while anything else is held)."""
    budget = server._state.budget
    budget.wait_s = 60
    charge = budget.charge()
    waiting = asyncio.run_coroutine_threadsafe(
        charge.resize(budget.total, time.monotonic() + 60), server._loop
    )
    assert wait_until(lambda: budget.waiting == 1, HANG_S)
    try:
        yield budget
    finally:
        waiting.cancel()
        server._loop.call_soon_threadsafe(charge.release)  # if it got the memory meanwhile


def _stalled_stream(client: H2GrpcClient, budget: MemoryBudget, rows: int = ROWS) -> int:
    """Start a stream that waits for its reader with its first chunk; its stream id."""
    stream_id = client.start_call(
        EVALUATE_STREAM, repeated_nodes(SELECTED, rows).SerializeToString()
    )
    sending = ("EvaluateStream", "sending")
    assert wait_until(lambda: budget.held_by_kind()[0][sending] > 0, HANG_S), budget.used
    return stream_id


@pytest.mark.parametrize("rows", [1, 2])
def test_a_stalled_stream_s_memory_drops_to_its_chunk_and_a_late_reader_gets_a_status(
    registry, rows
):
    """A stream of a million results whose reader keeps its window shut, while another call
    waits for memory: past the stall timeout its charge drops from its selection and its
    results (over 8 MiB) to the chunk grpc is writing, twice. What the server holds drops
    with it: in Python objects (tracemalloc: over two rows, the job's 8 MB of selected ids
    and the block's results), and in malloc's own count (the ids' arrays). One row is
    answered by the engine whole, two rows by an evaluation job; the request message was
    let go once either was made. Then the reader opens its window: it gets that chunk,
    right, and then RESOURCE_EXHAUSTED naming --stream-stall-timeout, well within its
    deadline (before, a handler ended at abandonment left a late reader hanging until its
    deadline)."""
    with running_server(registry, stream_stall_timeout=STALL_S * 5) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            for _ in range(2):  # the plan cached, and a structure's second call compiles it
                pb_grpc.GradientServiceStub(channel).Evaluate(repeated_nodes(1, rows), timeout=60)
        gc.collect()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            with H2GrpcClient(server.port, window=0, keep_data=True) as client:
                budget = server._state.budget
                stream_id = _stalled_stream(client, budget, rows)
                held_before = tracemalloc.get_traced_memory()[0] - baseline
                charged_before, malloc_before = budget.used, in_use_mib()
                with _budget_wanted(server):
                    assert wait_until(lambda: budget.used < 4 * 2**20, HANG_S), budget.used
                    charged_after, malloc_after = budget.used, in_use_mib()
                    held_after = tracemalloc.get_traced_memory()[0] - baseline
                    opened = time.monotonic()
                    client.open_window(stream_id, 2**26)
                    assert client.wait_finished(stream_id, HANG_S)
                    took = time.monotonic() - opened
        finally:
            tracemalloc.stop()
        state = client.streams[stream_id]
        assert wait_until(lambda: budget.used == 0, HANG_S), budget.used
    print(
        f"charged {charged_before / 2**20:.1f} -> {charged_after / 2**20:.1f} MiB, "
        f"tracemalloc {held_before / 2**20:.1f} -> {held_after / 2**20:.1f} MiB, "
        f"malloc {malloc_before:.1f} -> {malloc_after:.1f} MiB"
    )
    [chunk] = _messages(bytes(state.data))
    results = _check_chunks([chunk], rows)
    assert 0 < results < SELECTED * rows  # the chunk in flight, and no more
    assert charged_before > 8 * 2**20
    assert charged_after == 2 * len(chunk), (charged_after, len(chunk))
    assert held_after <= 2 * len(chunk), (held_after, len(chunk))
    if rows > 1:  # the selected ids; an answer's results by node are two floats each
        assert held_before > 8 * SELECTED > 2 * len(chunk), (held_before, len(chunk))
    # The answer's ids (3.8 MiB, as uint32), or over two rows the job's selected ids (7.6
    # MiB); the request message was let go before, once they were made.
    freed = 3.5 if rows == 1 else 7
    assert malloc_before - malloc_after > freed, (malloc_before, malloc_after)
    assert state.grpc_status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert b"stream-stall-timeout" in state.trailers[b"grpc-message"]
    assert took < HANG_S


def test_a_slow_reader_within_the_stall_timeout_gets_the_whole_stream(registry):
    """A reader that takes a little at a time (its window opened by 512 KiB every tenth of
    the stall timeout: each chunk within it), while another call waits for memory the
    whole while, gets every result, right, and OK."""
    with running_server(registry, stream_stall_timeout=STALL_S * 5) as server:
        budget = server._state.budget
        with H2GrpcClient(server.port, window=0, keep_data=True) as client:
            stream_id = _stalled_stream(client, budget)
            state = client.streams[stream_id]
            give_up = time.monotonic() + 12 * HANG_S
            with _budget_wanted(server):
                while not state.finished and time.monotonic() < give_up:
                    client.open_window(stream_id, 2**19)
                    client.pump(lambda: state.finished, time.monotonic() + STALL_S / 2)
    assert state.grpc_status == 0, state.trailers
    assert _check_chunks(_messages(bytes(state.data))) == SELECTED * ROWS


def test_a_finished_stream_s_job_is_freed_without_the_cyclic_collector(registry, monkeypatch):
    """A call and its budget charge refer to each other, so only the cyclic collector frees
    the call: what it kept (``held``: the job's arrays, and through them the request) is
    let go of when the call finishes, so that a busy server's finished streams do not
    wait for a collection to give their memory back."""
    jobs = []
    make_job = evaluation.Evaluator.job

    def recording(self, *args):
        job = make_job(self, *args)
        jobs.append(weakref.ref(job))
        return job

    monkeypatch.setattr(evaluation.Evaluator, "job", recording)
    gc.collect()
    gc.disable()
    try:
        with running_server(registry) as server:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.GradientServiceStub(channel)
                chunks = list(stub.EvaluateStream(repeated_nodes(1_000, ROWS), timeout=60))
                assert _check_chunks([chunk.SerializeToString() for chunk in chunks]) == 2_000
            [job] = jobs
            assert wait_until(lambda: job() is None, HANG_S)
    finally:
        gc.enable()
