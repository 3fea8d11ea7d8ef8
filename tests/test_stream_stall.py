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
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gradserve.server.service.admission import MemoryBudget
from gradserve.server.service.calls import (
    CallScope,
    Held,
    SendTimedOut,
    ServerState,
    StreamStalled,
)
from gradserve.server.service.limits import Limits

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
