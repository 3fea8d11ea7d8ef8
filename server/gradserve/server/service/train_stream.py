"""The Train stream: many Evaluate requests, one message each, over one long-lived call.

A training loop sends a request of one structure per step. As unary calls each pays for a new
call (headers, authentication, a handler task, a log line's fields); on one open stream a
request costs a message. Every request is served as an Evaluate call is (``MessageScope`` is
a ``CallScope`` whose request, reply and status travel in stream messages): it is admitted
to the memory budget, counts against max-concurrent-calls while it runs, has its own
deadline, and fails alone, answered with a ``google.rpc.Status``. Authentication ran once,
when the stream opened (the interceptor sees only calls).

Requests answered on the event loop are read one at a time, each after the previous answer
was sent. Once a request's work leaves the loop, the stream reads ahead, holding at most
two requests that are not being evaluated (one waiting for the evaluation in progress, one
read after it), each charged to the budget by its length while held; reading stops until
one is taken, so HTTP/2 flow control holds back a client that sends faster than it is
served. Replies go out in the order the requests came.
"""

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from gradserve.server.engine.errors import Cancelled, GraphError
from gradserve.server.service import status, tracing
from gradserve.server.service.admission import BudgetBusy, NeverFits
from gradserve.server.service.calls import ON_THE_LOOP, SENDING, CallScope, SendTimedOut
from gradserve.server.service.evaluation import raw_request_bytes
from gradserve.server.service.limits import DeadlineExceeded
from gradserve.server.service.metrics import StreamTally
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1.wire_format import VARINT, delimited_header, varint

_ID, _RESPONSE = 1, 2  # TrainResponse's field numbers
_ID_KEY = varint(_ID << 3 | VARINT)
_DETAILS_KEY = "grpc-status-details-bin"
_CANCELLED = "the client cancelled this request"
_OK = grpc.StatusCode.OK


def _envelope_type() -> type:
    """TrainRequest with its ``request`` field read as bytes: the same wire format (a
    message field is length-delimited bytes), so a message is parsed without parsing the
    EvaluateRequest inside, which its call then decodes from those bytes as a unary call
    decodes its request (parsed inside, it had to be serialized again for that)."""
    message = descriptor_pb2.DescriptorProto()
    pb.TrainRequest.DESCRIPTOR.CopyToProto(message)
    message.name = "TrainEnvelope"
    (request,) = (field for field in message.field if field.name == "request")
    request.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    request.ClearField("type_name")
    file = descriptor_pb2.FileDescriptorProto(
        name="gradserve/server/train_envelope.proto", package="gradserve.server", syntax="proto3"
    )
    file.message_type.append(message)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    envelope = pool.FindMessageTypeByName(f"{file.package}.{message.name}")
    return message_factory.GetMessageClass(envelope)


_Envelope = _envelope_type()


def decode(raw: bytes):
    """A TrainRequest's fields, its ``request`` as the EvaluateRequest's bytes."""
    try:
        return _Envelope.FromString(raw)
    except DecodeError:
        reason = "a Train stream message is not a valid TrainRequest"
        raise GraphError(reason, field="request") from None


def answered(request_id: int, reply: bytes) -> bytes:
    """A TrainResponse carrying the serialized EvaluateResponse ``reply``, written without
    parsing the reply again."""
    return _ID_KEY + varint(request_id) + delimited_header(_RESPONSE, len(reply)) + reply


def failed(request_id: int, result: grpc.Status) -> bytes:
    """A TrainResponse carrying the status ``result`` as a serialized google.rpc.Status:
    the bytes of its grpc-status-details-bin trailer when it has one."""
    rich = dict(result.trailing_metadata or ()).get(_DETAILS_KEY)
    if rich is None:
        code = result.code.value[0]
        rich = status_pb2.Status(code=code, message=result.details).SerializeToString()
    return pb.TrainResponse(id=request_id, status=rich).SerializeToString()


class MessageScope(CallScope):
    """One TrainRequest: a call whose request came in a stream message, whose reply and
    status go out in one, and whose failure ends only itself. Its log line is at DEBUG when
    it succeeded (at INFO a stream logs one line when it ends, with the nodes of all its
    requests), at INFO when it failed."""

    @property
    def log_level(self) -> int:
        return logging.DEBUG if self.code is _OK else logging.INFO

    method = "Train"

    def __init__(self, stream: CallScope, inbox: "_Inbox", message) -> None:
        # CallScope's own, from what the stream knows: asked of grpc and asyncio once per
        # stream, not per message.
        self.context = stream.context
        self.state = state = stream.state
        self._task = stream._task
        self._loop = stream._loop
        self.charge = state.budget.charge(self)
        self.span = tracing.start_call("Train", stream.context)
        # The request's own timeout within the stream's deadline, or the server's default.
        deadline = stream.deadline  # the caller's (inf: none)
        if message.timeout_ms:
            deadline = min(deadline, time.monotonic() + message.timeout_ms / 1e3)
        elif deadline == math.inf:
            deadline = time.monotonic() + state.limits.default_deadline_s
        self.deadline = deadline
        self.stream = stream
        self._inbox = inbox
        self.connection = inbox.connection
        self.id = message.id
        self._raw = message.request

    def cancel(self) -> None:
        """The client cancelled this request: stop it at the engine's next stop check."""
        self.note = "cancelled"
        self._gone = True

    async def receive(self) -> bytes:
        self.refuse_if_draining()
        self.count_in()
        raw, self._raw = self._raw, b""
        return raw

    async def compute(self, work: Callable, *args, memory: int | None = None):
        self._inbox.read_ahead()  # the loop goes on while the work runs: read cancels meanwhile
        return await super().compute(work, *args, memory=memory)

    def held_as(self) -> tuple[str, str]:
        """As a call's, but its reply is written by its stream."""
        method, doing = super().held_as()
        if doing == ON_THE_LOOP and self.stream._sending_since is not None:
            doing = SENDING
        return method, doing

    async def send(self, message: bytes) -> None:
        await self.stream.send(answered(self.id, message))

    def _finish(self) -> None:
        if not self._finished:
            self.stream.nodes += self.nodes
        super()._finish()

    def _record(self, elapsed: float) -> None:
        tally = self._inbox.tally
        if tally is not None and self.code is _OK:
            tally.add(elapsed, self.nodes)
        else:
            super()._record(elapsed)

    async def __aexit__(self, kind, exc, traceback) -> bool:
        try:
            if exc is None:
                return False
            if isinstance(exc, asyncio.CancelledError | SendTimedOut):  # the stream ends
                self._went_away()
                return False
            if self.note == "cancelled":
                result = status.plain(grpc.StatusCode.CANCELLED, _CANCELLED)
            elif isinstance(exc, Cancelled) and not isinstance(exc, DeadlineExceeded):
                # stopped, but neither by this request's cancel nor its deadline
                self._went_away()
                return False
            else:
                result = self._status_of(exc)
            self.code = result.code
            self._gone = True
            self._finish()  # counted before the client can read the status, as in _end
            await self.stream.send(failed(self.id, result))
            return True
        finally:
            self._finish()


@dataclasses.dataclass
class _Read:
    """A request read from the stream, and what it holds of the budget until it is taken;
    ``refused`` when even that could not be held (the request is answered with it)."""

    message: object  # decode's
    size: int = 0
    refused: Exception | None = None
    cancelled: bool = False


class _Inbox:
    """The stream's requests, and the cancels among them.

    While every request is answered on the event loop (the small-call path), ``next`` reads
    the next one itself: a hand-over from a reading task costs each message a turn of the
    loop, and nothing could be read during such an answer anyway. Once a request's work
    leaves the loop (``read_ahead``), a task of its own reads ahead by one for the rest of
    the stream, so that a cancel for that request, or for one sent after it, is seen while
    it runs."""

    def __init__(self, stream: CallScope) -> None:
        self.stream = stream
        self.queue: asyncio.Queue | None = None
        self.reader: asyncio.Task | None = None
        self.current: MessageScope | None = None
        self.waiting: list[_Read] = []  # read ahead and not yet taken
        self.held = 0  # bytes of those requests, charged to the stream
        self.connection = stream.context.peer()  # each request counts against it
        metrics = stream.state.metrics
        self.tally = None if metrics is None else StreamTally(metrics, "Train", stream._loop)

    def read_ahead(self) -> None:
        """Read from a task of its own from now on."""
        if self.reader is None:
            self.queue = asyncio.Queue(maxsize=1)
            self.reader = asyncio.get_running_loop().create_task(self._read_all())

    async def _read_one(self) -> tuple[object, int] | None:
        """The next request and its length on the wire, after any cancels (applied on the
        way); None once the client has half-closed."""
        while True:
            raw = await self.stream.read()
            if raw is grpc.aio.EOF:
                return None
            message = decode(raw)
            if not message.cancel:
                return message, len(raw)
            self._cancel(message.id)

    async def _read_all(self) -> None:
        """Read ahead until the client half-closes; an error ends the stream."""
        try:
            while (read_one := await self._read_one()) is not None:
                message, length = read_one
                read = _Read(message, raw_request_bytes(length))
                try:
                    await self.stream.admit(self.held + read.size)
                except (NeverFits, BudgetBusy) as refused:  # answered alone, not held
                    read = _Read(_Envelope(id=message.id), refused=refused)
                self.held += read.size
                self.waiting.append(read)
                await self.queue.put(read)
            await self.queue.put(None)
        except Exception as exc:  # handed to the stream, which ends with its status
            await self.queue.put(exc)

    def _cancel(self, request_id: int) -> None:
        if self.current is not None and self.current.id == request_id:
            self.current.cancel()
        for read in self.waiting:
            if read.message.id == request_id:
                read.cancelled = True

    async def next(self) -> _Read | None:
        """The next request, no longer charged to the stream; None once the client has
        half-closed. While waiting, the stream is a call waiting for its request (a drain
        ends it)."""
        state = self.stream.state
        state.waiting_for_request.add(self.stream)
        try:
            if self.reader is None:
                read_one = await self._read_one()
                return None if read_one is None else _Read(read_one[0])
            read = await self.queue.get()
        finally:
            state.waiting_for_request.discard(self.stream)
        if isinstance(read, Exception):
            raise read
        if read is not None:
            self.waiting.remove(read)
            self.held -= read.size
            await self.stream.admit(self.held)
        return read

    def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.tally is not None:
            self.tally.flush()  # before the stream's status: the metrics are exact when it ends


async def serve(stream: CallScope, evaluate: Callable[[CallScope], Awaitable[bytes]]) -> None:
    """Answer the stream's requests in order with ``evaluate`` (one Evaluate's work: a
    call scope in, the reply's bytes out) until the client half-closes."""
    stream.deadline = stream.state.limits.caller_deadline(stream.context.time_remaining())
    stream.metered_nodes = False  # its messages count their nodes; its own sum is for its log
    inbox = _Inbox(stream)
    try:
        while (read := await inbox.next()) is not None:
            stream.refuse_if_draining()
            async with MessageScope(stream, inbox, read.message) as call:
                if read.cancelled:
                    call.cancel()
                    raise Cancelled()
                if read.refused is not None:
                    raise read.refused
                inbox.current = call
                await call.send(await evaluate(call))
            inbox.current = None
    finally:
        inbox.close()
