"""One call's life on the server: receiving its request, running its work, sending its
reply, and ending with a status that tells the truth, in the log and the metrics as well
as to the client.

Waiting costs nothing: a call waiting for its request message, for a compute slot, for
memory or for a slow reader is a suspended coroutine on the event loop; it holds a thread
of the executor only while it computes, and memory of the budget only once admitted.
"""

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from gradserve.server.engine.errors import (
    Cancelled,
    GraphError,
    NodeError,
    OpFailure,
    PlanNotFound,
)
from gradserve.server.runtime import malloc
from gradserve.server.service import status, tracing
from gradserve.server.service.admission import BudgetBusy, MemoryBudget, NeverFits
from gradserve.server.service.arrival import ArrivalGate
from gradserve.server.service.compute_slots import LONG, PAUSE, SLICE, ComputeSlots, Waiter
from gradserve.server.service.counts import add_count
from gradserve.server.service.limits import DeadlineExceeded, LimitExceeded, Limits
from gradserve.server.service.logs import CallLog
from gradserve.server.service.metrics import CallMetrics
from gradserve.server.service.security import bearer
from gradserve.server.service.sending import SendingShare

log = logging.getLogger("gradserve.server.service.servicer")
call_log = CallLog(log)  # the line each call logs, written off the call's path

DEFAULT_SEND_TIMEOUT_S = 30.0
_SEND_TIMED_OUT = "send timeout"  # abandoned at the send timeout (``CallScope._abandon``)
# A stream's chunk that waits this long for its reader while other calls wait for memory
# lets go of what the stream holds (``CallScope._let_go``); after it, the watch looks
# whether calls wait every STALL_POLL_S.
DEFAULT_STREAM_STALL_TIMEOUT_S = 3.0
STALL_POLL_S = 0.5
PARKED_POLL_S = 0.25  # a parked step looks at its stop flag and deadline this often
PAUSE_POLL_S = 0.01  # a pausing step looks for a call waiting for its slot this often
_OK = grpc.StatusCode.OK  # an enum member read through its class costs a descriptor call


class _Done:
    """An awaitable that is done already: awaiting it returns None at once."""

    def __await__(self):
        return iter(())


_ADMITTED = _Done()


class TooManyCalls(Exception):
    """More calls in progress than max-concurrent-calls."""


class TooManyCallsOnConnection(Exception):
    """More calls in progress on one connection than max-calls-per-connection."""


class TooManyCallsOnToken(Exception):
    """More calls in progress with one bearer token than max-calls-per-token."""


class RequestTimedOut(Exception):
    """The request message did not arrive within the request timeout (or the deadline)."""


class SendTimedOut(Exception):
    """The client took a reply message only after the send timeout: the call was abandoned."""


class StreamStalled(Exception):
    """A stream's reader took no chunk for the stall timeout while other calls waited for
    memory: the call let go of its work and was abandoned."""


class Draining(Exception):
    """The server is shutting down and takes no new calls."""


@dataclass
class ServerState:
    """What the calls of one server share."""

    limits: Limits
    budget: MemoryBudget
    executor: ThreadPoolExecutor
    threads: int
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S
    stall_s: float = DEFAULT_STREAM_STALL_TIMEOUT_S  # --stream-stall-timeout
    metrics: CallMetrics | None = None
    active: int = 0  # calls whose request has arrived and that have not ended
    long_calls: int = 0  # of those, the ones that have computed long (compute_slots.LONG)
    draining: bool = False
    stopped: bool = False  # the grace ran out: calls still running are being cancelled
    waiting_for_request: set = field(default_factory=set)  # of CallScope
    per_connection: dict = field(default_factory=dict)  # calls counted, by peer
    per_token: dict | None = None  # calls counted, by bearer token, when several are accepted
    all_ended: asyncio.Event | None = None
    slots: ComputeSlots | None = None
    arrival: ArrivalGate | None = None  # None: reads are not gated
    sending: SendingShare | None = None  # None: unary replies are bounded by the budget only

    def on_loop(self) -> None:
        """Make the asyncio objects, on the server's event loop."""
        self.all_ended = asyncio.Event()
        self.all_ended.set()
        self.slots = ComputeSlots(self.threads)


class Held:
    """What a stream's handler keeps between its writes (its job or the engine's answer,
    and the chunks of the block being sent, which hold the block's results), kept here
    rather than in the handler's frame: grpc.aio cannot end a call whose write waits for
    its reader, but the call can empty this meanwhile (``CallScope._let_go``), so that a
    reader that stopped reading holds only the chunk grpc is writing."""

    __slots__ = ("chunks", "work")

    def __init__(self, work) -> None:
        self.work = work
        self.chunks: Iterator[bytes] | None = None


class CallScope:
    """``async with CallScope(method, context, state) as call:`` around a handler's body.

    Engine and admission errors raised inside end the call with their status; a client
    that went away (cancel, deadline, connection lost) is logged as what it saw."""

    log_level = logging.INFO  # of the line each call logs when it ends

    # What a call starts with, as class attributes: a Train stream makes a scope per
    # message, and each attribute an instance need not set is a store saved.
    nodes = 0
    metered_nodes = True  # whether the metrics count ``nodes`` (a Train stream's messages do)
    rows = 0
    request_bytes = 0  # the decoded request's memory, once known
    labels: Sequence[str] = ()  # the graph's node labels, once known, for messages
    code = _OK
    # The log's word for the status when the server cannot know which of two the client
    # got (``_went_away``); else the log says ``code``.
    logged_status = ""
    connection = ""  # the peer, once the call counts against the limits
    token = ""  # its bearer token, when the server counts calls by token
    note = ""
    _gone = False
    _awaiting_message = False  # the request message has not arrived yet
    _counted = False
    _finished = False
    _running = None  # the executor future of the step in progress
    _reply_share = None  # its reply's sending.Reservation, once it has one
    _sending_since: float | None = None  # loop time the write in progress began
    _writing = 0  # the length of the message last handed to grpc
    held: Held | None = None  # what a stream's handler keeps between writes
    _awaiting_slot = False  # waiting for a compute slot
    # When the call first asked for a compute slot (the slots' clock) and the CPU seconds
    # of its finished steps on the executor (``compute_slots`` queues by them), and the
    # thread times the step in progress began and got its slot.
    slot_since: float | None = None
    cpu_used = 0.0
    _step_began = 0.0
    _slice_began = 0.0
    _holds_slot = False
    _long = False  # it has computed LONG (its steps' threads know)
    _long_counted = False  # and it counts in ServerState.long_calls
    _parked: Waiter | None = None  # the queue place of its step parked on its thread
    _resume: threading.Event | None = None  # set to wake the parked step
    _send_watch: asyncio.TimerHandle | None = None

    def __init__(self, method: str, context, state: ServerState) -> None:
        """The call's deadline is the caller's, or the server's default without one."""
        self.method = method
        self.context = context
        self.state = state
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self.charge = state.budget.charge(self)
        self.span = tracing.start_call(method, context)  # tracing.NO_SPAN when it is off
        self.deadline = state.limits.deadline(context.time_remaining())

    # -- the engine's stop check -------------------------------------------------------
    def should_stop(self) -> bool:
        """True once the caller has gone; past the deadline it raises DeadlineExceeded.
        Polled from executor threads: it reads only plain attributes."""
        if self._gone:
            return True
        if time.monotonic() > self.deadline:
            raise DeadlineExceeded(
                "the call ran past its deadline (the caller's, or the server's "
                "default-deadline for calls without one) and was stopped"
            )
        return False

    def held_as(self) -> tuple[str, str]:
        """What the call holds its memory for now, for the budget's ledger by kind
        (``admission.MemoryBudget.held_by_kind``): read from the metrics thread."""
        if self._sending_since is not None or self.note in (_SEND_TIMED_OUT, _STALLED):
            doing = SENDING
        elif self.charge.waiting:
            doing = WAITING_FOR_MEMORY
        elif self.charge.waiting_for_large_share:
            doing = WAITING_FOR_LARGE_CALLS_SHARE
        elif self._reply_share is not None and self._reply_share.waiting:
            doing = WAITING_FOR_SENDING_SHARE
        elif self._awaiting_slot or self._parked is not None:
            doing = WAITING_FOR_SLOT
        elif self._running is not None:
            doing = COMPUTING
        else:
            doing = ON_THE_LOOP
        return self.method, doing

    # -- the steps ---------------------------------------------------------------------
    def refuse_if_draining(self) -> None:
        if self.state.draining:
            raise Draining()

    async def receive(self) -> bytes:
        """The request message's bytes, once they have all arrived; then the call counts
        against max-concurrent-calls."""
        self.refuse_if_draining()
        self.state.waiting_for_request.add(self)
        arriving = min(self.deadline, time.monotonic() + self.state.limits.request_timeout_s)
        self._awaiting_message = True
        try:
            async with asyncio.timeout(arriving - time.monotonic()):
                raw = await self.read()
        except TimeoutError:
            raise RequestTimedOut() from None
        finally:
            self.state.waiting_for_request.discard(self)
        self._awaiting_message = False
        if raw is grpc.aio.EOF:
            if await self._refused_by_grpc():
                raise asyncio.CancelledError()  # the client has grpc's status already
            raise GraphError("the call ended without a request message", field="request")
        self.count_in()
        return raw

    async def _refused_by_grpc(self) -> bool:
        """Whether the call ended for grpc before its request message: grpc.aio hands the
        handler the same EOF as for a client that sent no message, but then refuses to
        start the reply (or cancels the call as it tries), where a client still waiting
        gets its headers. Either grpc refused the message (over max-message-mb), having
        sent the client RESOURCE_EXHAUSTED, or the client reset the stream first: grpc.aio
        tells the handler neither which nor the status it sent, so the log says both."""
        try:
            await self.context.send_initial_metadata(())
        except (asyncio.CancelledError, grpc.aio.UsageError, grpc.aio.InternalError):
            self.code = grpc.StatusCode.RESOURCE_EXHAUSTED
            self.logged_status = REFUSED_OR_RESET
            self.note = "refused by grpc"
            return True
        return False

    async def read(self):
        """The next request message from the call's stream (or EOF), read holding a read
        slot when the server gates them (``arrival``)."""
        gate = self.state.arrival
        if gate is None:
            return await self.context.read()
        return await gate.read(self.context.read, self._take_back_read, self.context.peer)

    def _take_back_read(self, give_back: Callable[[], None], over_share: bool) -> None:
        """The read's slot was taken back (``arrival``): end the call, then ``give_back``."""
        self.note = _TAKEN_BACK_OVER_SHARE if over_share else _TAKEN_BACK
        # grpc lets go of the call's bytes when the call is done, after the status is sent;
        # the holes they leave in malloc's heap are then handed back to the system.
        self.context.add_done_callback(lambda _context: _give_back_then_trim(give_back))
        self._task.cancel()

    def count_in(self) -> None:
        """Count the call against max-concurrent-calls, its connection's and its token's
        shares (and the drain) from now on."""
        state, limits = self.state, self.state.limits
        if state.active >= limits.max_concurrent_calls:
            raise TooManyCalls()
        self.connection = self.connection or self.context.peer()
        if state.per_connection.get(self.connection, 0) >= limits.max_calls_per_connection:
            raise TooManyCallsOnConnection()
        if state.per_token is not None:
            self.token = bearer(self.context.invocation_metadata())
            if state.per_token.get(self.token, 0) >= limits.max_calls_per_token:
                raise TooManyCallsOnToken()
            add_count(state.per_token, self.token, 1)
        add_count(state.per_connection, self.connection, 1)
        state.active += 1
        self.state.all_ended.clear()
        self._counted = True

    def admit(self, nbytes: int) -> Awaitable[None]:
        """Hold ``nbytes`` of the memory budget (waiting or refused as admission says); to be
        awaited. A charge that fits now is held before this returns, and what it returns
        is done already: no coroutine is made for it."""
        if self.charge.resize_now(nbytes):
            return _ADMITTED
        return self.charge.resize(nbytes, self.deadline)

    def reserve_sending(self, reply_bytes: int) -> Awaitable[None]:
        """Hold the two copies of a unary reply of ``reply_bytes`` (estimated, then known)
        in the sending share (``sending``), waiting or refused as admission says; to be
        awaited. A small reply needs none, and gets a done awaitable, as ``admit``'s."""
        share = self.state.sending
        if share is None or (self._reply_share is None and 2 * reply_bytes <= share.smallest):
            return _ADMITTED
        if self._reply_share is None:
            self._reply_share = share.reservation(self.connection or self.context.peer())
        return self._reply_share.resize(2 * reply_bytes, self.deadline)

    async def compute(self, work: Callable, *args, memory: int | None = None):
        """``work(*args, should_stop)`` on the executor, holding a compute slot (``compute_slots``:
        the call that has used the least CPU first, a long step sliced), and with ``memory``,
        that many bytes of the budget (``admit``) in all while it runs.

        The memory is taken once the call has its slot: a call waiting for a slot holds no
        more of the budget than it did, so that calls queued for the threads (twenty
        large streams behind four threads, in issue 19's soak) do not hold what the calls
        computing need. A call that gets its slot but must wait for the memory gives the
        slot back meanwhile, and queues for a slot again once it has the memory. A step
        parked for its turn (``_stop_check``) keeps its memory: it still holds it."""
        slots, connection = self.state.slots, self.connection or self.context.peer()
        if memory is not None and memory > self.state.budget.total:
            raise NeverFits(memory, self.state.budget)  # no use waiting for a slot first
        await self._slot(slots, connection)
        if memory is not None:
            admitting = self.admit(memory)
            if admitting is not _ADMITTED:
                self._leave_slot(slots, connection)
                await admitting  # waiting or refused
                await self._slot(slots, connection)
        try:
            # The thread's own future: cancelling the awaiting task does not stop a thread,
            # so _finish must know whether it still runs.
            running = self._running = self.state.executor.submit(self._step, work, args)
            try:
                return await asyncio.wrap_future(running)
            finally:
                if running.done():
                    self._running = None
        finally:
            self._leave_slot(slots, connection)

    async def _slot(self, slots: ComputeSlots, connection: str) -> None:
        """Wait for a compute slot for the call (its holder's kind says so meanwhile)."""
        if self.slot_since is None:
            self.slot_since = slots.clock()
        self._awaiting_slot = True
        try:
            await slots.acquire(connection, self.slot_since, self.cpu_used)
        finally:
            self._awaiting_slot = False
        self._holds_slot = True

    def _leave_slot(self, slots: ComputeSlots, connection: str) -> None:
        """Give back the call's slot, or its step's place in the queue: a step parked when
        its task was cancelled is woken to stop."""
        if self._parked is not None:
            slots.withdraw(self._parked)
            self._parked = None
            slots.parked -= 1
            self._gone = True
            self._resume.set()
        if self._holds_slot:
            self._holds_slot = False
            slots.release(connection)

    # -- slices (on the step's thread, but for _give_up_slot and _resumed) ---------------
    def _step(self, work: Callable, args: tuple):
        """``work(*args, stop_check)``, its thread's CPU time added to the call's."""
        began = self._step_began = self._slice_began = time.thread_time()
        try:
            return work(*args, self._stop_check)
        finally:
            self.cpu_used += time.thread_time() - began

    def _stop_check(self) -> bool:
        """``should_stop``, after taking turns once the step's slice is over."""
        if time.thread_time() - self._slice_began >= SLICE:
            self._take_turns()
        return self.should_stop()

    def _take_turns(self) -> None:
        """Once the call has computed long, pause while shorter calls are in progress;
        then park the step until it is its turn again if a waiting call comes first (none
        parks beyond the executor's spare threads; ``compute_slots``)."""
        slots = self.state.slots
        used = self.cpu_used + time.thread_time() - self._step_began
        if used >= LONG:
            self._pause(slots)
        if (
            slots.first_key != math.inf
            and slots.parked < slots.max_parked
            and slots.passes(self.slot_since, used)
        ):
            self._park(used)
        self._slice_began = time.thread_time()

    def _park(self, used: float) -> None:
        resume = threading.Event()
        try:
            self._loop.call_soon_threadsafe(self._give_up_slot, used, resume)
        except RuntimeError:  # the event loop is closed: the server has stopped
            return
        # Woken on its turn, or when the call ends (``_leave_slot``); the deadline and the
        # stop flag are looked at meanwhile, in case no one wakes it.
        while not resume.wait(min(PARKED_POLL_S, max(0.0, self.deadline - time.monotonic()))):
            if self._gone or time.monotonic() > self.deadline:
                break

    def _pause(self, slots: ComputeSlots) -> None:
        """Leave the cores to the event loop and the other calls' threads for a PAUSE
        while a call that has not computed long is in progress: no one waiting for a
        slot does not mean no one waiting for the CPU. A call that comes to wait for a
        slot, the stop flag or the deadline ends the pause early."""
        if not self._long:
            self._long = True
            with contextlib.suppress(RuntimeError):  # the event loop is closed
                self._loop.call_soon_threadsafe(self._count_long)
        state = self.state
        if state.active <= state.long_calls:
            return
        slots.pauses += 1
        until = min(time.monotonic() + PAUSE, self.deadline)
        while slots.first_key == math.inf and not self._gone and time.monotonic() < until:
            time.sleep(PAUSE_POLL_S)

    def _count_long(self) -> None:
        """On the loop: count the call in ServerState.long_calls while it is counted."""
        if self._counted and not self._long_counted:
            self._long_counted = True
            self.state.long_calls += 1

    def _give_up_slot(self, used: float, resume: threading.Event) -> None:
        """On the loop: give the slot to the call that comes first and queue the step
        for its turn; ``resume`` at once when it is no longer due to (the waiter got
        another slot meanwhile, the call has gone, or the spare threads are parked)."""
        slots = self.state.slots
        if (
            self._gone
            or not self._holds_slot
            or slots.parked >= slots.max_parked
            or not slots.passes(self.slot_since, used)
        ):
            resume.set()
            return
        connection = self.connection or self.context.peer()
        self._resume = resume
        slots.parked += 1
        self._holds_slot = False
        slots.release(connection)
        waiter = slots.wait(connection, self.slot_since, used, self._resumed)
        if not self._holds_slot:  # else granted at once: its slot came back
            self._parked = waiter

    def _resumed(self) -> bool:
        """On the loop: the parked step holds a slot again; wake it."""
        self._parked = None
        self.state.slots.parked -= 1
        self._holds_slot = True
        self._resume.set()
        return True

    async def send_held(self) -> None:
        """Write the chunks of ``held`` one by one, each made once the one before has been
        taken. The call may empty ``held`` while a write waits (``_let_go``): no frame here
        or in the handler keeps the chunks' iterator, only the message being written."""
        held = self.held
        while held.chunks is not None and (chunk := next(held.chunks, None)) is not None:
            if self.should_stop():  # past the deadline it raises DeadlineExceeded
                raise Cancelled()  # the client is gone: never an OK status
            await self.send(chunk)
        held.chunks = None

    async def send(self, message: bytes) -> None:
        """Write one reply message. A client that has not taken it within the send timeout
        is abandoned (see ``_abandon``), and a stream's within the stall timeout while
        other calls wait for memory; once grpc lets go of the message, the call ends with
        a status (CANCELLED, or RESOURCE_EXHAUSTED for a stalled stream) instead of going
        on."""
        self._sending_since = self._loop.time()
        self._writing = len(message)
        if self._send_watch is None:
            self._watch_send(self._send_due(self._sending_since))
        try:
            await self.context.write(message)
        except Exception:
            # grpc refuses the write only when the call is over for the client (it cancelled,
            # its connection went, its deadline passed): no status can reach it any more,
            # so the call ends as CANCELLED (or DEADLINE_EXCEEDED), without a traceback.
            raise asyncio.CancelledError() from None
        finally:
            self._sending_since = None
        if self.note == _SEND_TIMED_OUT:
            raise SendTimedOut()
        if self.note == _STALLED:
            raise StreamStalled()

    def _send_due(self, since: float) -> float:
        """When a write begun at ``since`` is to be looked at: at the send timeout, or for a
        stream whose handler keeps work the call can let go of, at the stall timeout."""
        due = since + self.state.send_timeout_s
        return due if self.held is None else min(due, since + self.state.stall_s)

    def _watch_send(self, due: float) -> None:
        """Look at the write in progress at ``due``: one timer a call, not one a message,
        so that a stream's many small replies cost no timer each."""
        self._send_watch = self._loop.call_at(due, self._check_send)

    def _check_send(self) -> None:
        """Abandon the call if its write in progress has waited the send timeout, or the
        stall timeout (a stream's, see ``_send_due``) while other calls wait for memory;
        else look again when it could have (a send that starts later arms the watch anew).
        Past the stall timeout, a stream's watch looks every STALL_POLL_S for calls waiting
        for memory, until its send timeout."""
        self._send_watch = None
        since = self._sending_since
        if since is None:
            return
        now, timeout_due = self._loop.time(), since + self.state.send_timeout_s
        if now >= timeout_due:
            self._abandon()
        elif now < self._send_due(since):
            self._watch_send(self._send_due(since))
        elif self._memory_wanted() and self._running is None:
            self._abandon(_STALLED)
        else:
            self._watch_send(min(now + STALL_POLL_S, timeout_due))

    def _memory_wanted(self) -> bool:
        """Whether other calls wait for memory the call holds: the budget's, or the large
        calls' share's when its charge is held there too (``large_calls``)."""
        return bool(self.state.budget.waiting) or self.charge.large_share_wanted

    def _abandon(self, why: str = _SEND_TIMED_OUT) -> None:
        """The client did not read within the send timeout (``why``: or, a stream's, the
        stall timeout while memory is wanted): stop the call's work and stop counting it
        (max-concurrent-calls, the drain).

        grpc.aio cannot end one call while a write of it waits for the reader's
        flow-control window (no status can be sent, and there is no server-side cancel),
        so its message stays with grpc, and stays charged to the memory budget (a unary
        reply, to the sending share as well: ``sending``), until the client reads, cancels
        or disconnects, its deadline passes, its connection reaches --max-connection-age,
        or the server stops (bench/stalled_write.py tries each way to end it). What a
        stream's handler keeps besides (``held``) is let go of at once (``_let_go``): that
        is why a stream's stall may abandon it sooner, its reader stopped and the memory
        it holds wanted."""
        self.note = why
        self._gone = True
        if why == _STALLED:
            log.warning(
                "%s: the client took no chunk for the stream stall timeout (%g s) while "
                "other calls waited for memory; call abandoned, all it held but the chunk "
                "grpc is writing given back",
                self.method,
                self.state.stall_s,
            )
        else:
            log.warning(
                "%s: the client did not read the reply within the send timeout (%g s); call "
                "abandoned, its memory held until grpc releases the message",
                self.method,
                self.state.send_timeout_s,
            )
        self._uncount()
        self._let_go()

    def _let_go(self) -> None:
        """Empty ``held`` and give back all the call holds of the budget but the message
        grpc is writing (its copy and the server's): the job's arrays (or the engine's
        answer) and the block's results (the request was let go once they were made). The
        handler stays in its write, so that when grpc lets go of the message, its reader
        still gets a status. Never while a step computes: its arrays would stay alive,
        charged to nothing."""
        held = self.held
        if held is None or self._running is not None:
            return
        held.work = held.chunks = None
        self.labels = ()
        self.charge.resize_now(min(self.charge.bytes, 2 * self._writing))

    def cancel_waiting(self) -> None:
        """Called when the server starts draining: end a call still waiting for its request."""
        self.note = "draining"
        self._task.cancel()

    def _release_from_thread(self, _running) -> None:
        """Give the call's memory back once its abandoned step has finished, from that
        step's thread; when the server has stopped meanwhile, there is nothing to give."""
        with contextlib.suppress(RuntimeError):  # the event loop is closed
            self._loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        """Give back what the call holds of the budget (and of the sending share)."""
        self.charge.release()
        if self._reply_share is not None:
            self._reply_share.release()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            add_count(self.state.per_connection, self.connection, -1)
            if self.state.per_token is not None:
                add_count(self.state.per_token, self.token, -1)
            self.state.active -= 1
            if self._long_counted:
                self._long_counted = False
                self.state.long_calls -= 1
            if not self.state.active:
                self.state.all_ended.set()

    # -- the end -----------------------------------------------------------------------
    async def __aenter__(self) -> "CallScope":
        self.started = time.perf_counter()
        return self

    async def __aexit__(self, kind, exc, traceback) -> bool:
        try:
            if exc is None:
                return False
            if isinstance(exc, asyncio.CancelledError):
                if self.note == "draining":
                    await self._end(status.plain(grpc.StatusCode.UNAVAILABLE, _DRAINING))
                if self.note in (_TAKEN_BACK, _TAKEN_BACK_OVER_SHARE):
                    await self._end(self._taken_back_status())
                self._went_away()
                return False
            await self._end(self._status_of(exc))
            return False  # unreachable: _end raises grpc's abort exception
        finally:
            self._finish()

    def _went_away(self) -> None:
        """The client cancelled, its deadline passed, the connection was lost, the reply
        was not read in time or the grace ran out: nothing can be sent any more."""
        self._gone = True
        if self.state.stopped:
            self.code = grpc.StatusCode.UNAVAILABLE  # what the client sees on shutdown
        elif self._past_deadline():
            self.code = grpc.StatusCode.DEADLINE_EXCEEDED
        elif self.note != "refused by grpc":  # else the code grpc sent is set
            self.code = grpc.StatusCode.CANCELLED
            if self._awaiting_message:
                # The client cancelled (or reset, or left) before its message arrived, or
                # grpc refused the call at its headers, having sent the client UNIMPLEMENTED
                # for a compressed request: the handler sees the same cancellation.
                self.logged_status = CANCELLED_OR_REFUSED

    def _past_deadline(self) -> bool:
        """Whether the call ended by its deadline: grpc's own account of the time left
        (the caller's deadline), or the server's default deadline."""
        remaining = self.context.time_remaining()
        if remaining is not None and remaining <= 0.01:
            return True
        return time.monotonic() >= self.deadline - 0.001

    def _status_of(self, exc: BaseException) -> grpc.Status:
        """The status an exception ends the call with (also sets ``self.code``)."""
        code = grpc.StatusCode
        if isinstance(exc, NodeError):
            exc.label_from(self.labels)  # "node 7 ('x1*w1'): ..."
        if isinstance(exc, LimitExceeded):
            result = status.bad_request(code.RESOURCE_EXHAUSTED, exc)
        elif isinstance(exc, GraphError):
            result = status.bad_request(code.INVALID_ARGUMENT, exc)
        elif isinstance(exc, PlanNotFound):
            result = status.plain(code.NOT_FOUND, str(exc))
        elif isinstance(exc, OpFailure):
            # A plugin bug: the client learns which op and node, and an error id; the
            # plugin's own error text stays in the server log under that id.
            result = status.internal(self.method, f"{exc}; the op plugin failed")
        elif isinstance(exc, DeadlineExceeded):
            result = status.plain(code.DEADLINE_EXCEEDED, str(exc))
        elif isinstance(exc, NeverFits | BudgetBusy):  # also the sending share's
            result = status.quota_failure(
                "max-memory-mb", str(exc), limit=exc.budget, estimate=exc.needed
            )
        elif isinstance(exc, MemoryError):
            result = status.quota_failure(
                "memory", "the server ran out of memory for this call; retry later or send less"
            )
        elif isinstance(exc, TooManyCalls):
            limit = self.state.limits.max_concurrent_calls
            result = status.quota_failure(
                "max-concurrent-calls",
                f"this server process already has {limit} calls in progress "
                f"(max-concurrent-calls = {limit}); retry later",
                limit=limit,
            )
        elif isinstance(exc, TooManyCallsOnConnection):
            result = _share_used_up(
                "max-calls-per-connection",
                "this connection",
                self.state.limits.max_calls_per_connection,
                "retry later, or spread the calls over more connections",
            )
        elif isinstance(exc, TooManyCallsOnToken):
            result = _share_used_up(
                "max-calls-per-token",
                "this bearer token",
                self.state.limits.max_calls_per_token,
                "retry later, once some of them have ended: one token holds at most this "
                "share of the call slots",
            )
        elif isinstance(exc, RequestTimedOut):
            result = status.plain(
                code.DEADLINE_EXCEEDED,
                "the request message did not arrive within the server's request-timeout "
                f"({self.state.limits.request_timeout_s:g} s) or the call's deadline",
            )
        elif isinstance(exc, SendTimedOut):
            result = status.plain(
                code.CANCELLED,
                "the reply was not read within the server's send timeout "
                f"({self.state.send_timeout_s:g} s); the call was abandoned",
            )
        elif isinstance(exc, StreamStalled):
            stall = self.state.stall_s
            result = status.quota_failure(
                "stream-stall-timeout",
                f"the stream's reader took no chunk for {stall:g} s while other calls "
                f"waited for the memory it held (stream-stall-timeout = {stall:g} s); the "
                "call was abandoned and its memory given to them: read the stream as it "
                "arrives, or retry later",
            )
        elif isinstance(exc, Draining):
            result = status.plain(code.UNAVAILABLE, _DRAINING)
        elif isinstance(exc, Cancelled):  # the stop flag: the client is gone already
            self._went_away()
            raise asyncio.CancelledError()
        else:
            result = status.internal(self.method)
        return result

    def _taken_back_status(self) -> grpc.Status:
        gate = self.state.arrival
        if self.note == _TAKEN_BACK_OVER_SHARE:
            why = (
                "this connection's calls held more than its share of the read slots while "
                "calls on other connections waited to receive their requests"
            )
        else:
            why = (
                f"the request message took more than {gate.hold_s:g} s to arrive (or "
                f"{gate.hold_s * gate.patience:g} s, on a connection whose earlier requests "
                "arrived) while other calls waited to receive theirs"
            )
        return status.quota_failure(
            "max-arriving-mb",
            f"{why} (max-arriving-mb = {gate.total // 2**20} lets {gate.slots} request(s) "
            f"of up to {gate.message_bytes // 2**20} MiB arrive at once); retry later",
            limit=gate.total,
        )

    async def _end(self, result: grpc.Status) -> None:
        self.code = result.code
        self._gone = True
        # grpc.aio's abort sends the status before it returns: the call is counted, logged
        # and given back first, so that a client that has its status sees it in the metrics.
        self._finish()
        await self.context.abort(result.code, result.details, result.trailing_metadata)

    def _finish(self) -> None:
        """Count, log and give back the call, once."""
        if self._finished:
            return
        self._finished = True
        # The call and its charge refer to each other: only the cyclic collector frees
        # them, and what ``held`` and ``labels`` keep (a job's arrays, the request) must
        # not wait for it (a soak's calm phase peaked 1.1 GiB resident where it had 0.4).
        self.held, self.labels = None, ()
        if self._send_watch is not None:
            self._send_watch.cancel()
        running = self._running
        if running is not None and not running.done():
            # The step goes on in its thread until its next stop check: its memory stays
            # charged until then.
            self._gone = True
            running.add_done_callback(self._release_from_thread)
        else:
            self._release()
        self._uncount()
        elapsed = time.perf_counter() - self.started
        rows = self.rows or None
        if self.span is not tracing.NO_SPAN:  # a status code's name is not free to get
            self.span.finish(self.code.name, nodes=self.nodes, rows=rows)
        if call_log.wanted(self.log_level):  # the peer's address is not free to get
            call_log.add(
                self.method,
                self.nodes,
                self.logged_status or self.code.name,
                elapsed * 1e3,
                rows=rows,
                peer=self.connection or self.context.peer(),  # known once the call counted
                trace_id=self.span.trace_id,
                level=self.log_level,
            )
        self._record(elapsed)

    def _record(self, elapsed: float) -> None:
        """Count the call in the metrics."""
        if self.state.metrics is not None:
            nodes = self.nodes if self.metered_nodes else 0
            self.state.metrics.record(self.method, self.code, elapsed, nodes)


def _give_back_then_trim(give_back: Callable[[], None]) -> None:
    give_back()
    malloc.hand_back_freed_soon()


def _share_used_up(setting: str, holder: str, limit: int, advice: str) -> grpc.Status:
    """The status of a call refused because ``holder`` has its share of the call slots."""
    return status.quota_failure(
        setting,
        f"{holder} already has {limit} calls in progress on this server process "
        f"({setting} = {limit}); {advice}",
    )


# What a call holds its memory for (``CallScope.held_as``), as the metrics label it.
SENDING = "sending"  # a reply message waiting for its reader to take it
WAITING_FOR_MEMORY = "waiting_for_memory"
WAITING_FOR_LARGE_CALLS_SHARE = "waiting_for_large_calls_share"  # then for the budget
WAITING_FOR_SENDING_SHARE = "waiting_for_sending_share"
WAITING_FOR_SLOT = "waiting_for_compute_slot"
COMPUTING = "computing"  # a step on the executor
ON_THE_LOOP = "on_the_loop"  # work on the event loop, or between steps

# The log's status of a call that ended for grpc before its request message arrived, when
# the server cannot know what the client got (docs/running-safely.md).
REFUSED_OR_RESET = "RESOURCE_EXHAUSTED_OR_RESET"
CANCELLED_OR_REFUSED = "CANCELLED_OR_UNIMPLEMENTED"
_STALLED = "stream stalled"  # abandoned at the stall timeout (``CallScope._abandon``)
_TAKEN_BACK = "read slot taken back"
_TAKEN_BACK_OVER_SHARE = "read slot taken back for the connection's share"
_DRAINING = "the server is shutting down and takes no new calls; retry on another server"
