"""A Client's Train stream: its Evaluate requests as messages on one open stream.

A training loop's step is one small request; as a unary call it pays for a new call each
time, as a message on an open bidirectional stream about half of that (see the proto's
``Train``). The stream opens at the first request and stays open; a request waits for its
own answer before the next is sent, so answers never need matching up. The Client's
timeout bounds each request: the server answers DEADLINE_EXCEEDED for a request past it, as
for a unary call; grpc's own deadline covers a whole call, so ``Overdue`` ends a stream whose
answer has not come even a grace after the timeout (a hung server), and the request fails with
DEADLINE_EXCEEDED all the same. A thread that finds the stream busy with another thread's
request, and every request to a server without ``Train``, goes as a unary call instead. A
failed request raises ``StreamedStatus``, which reads like the gRPC error of the unary call,
so the SDK handles both alike.

A Client keeps one stream per graph structure (``TrainStreams``), each opened with the
headers of its first request: the caller's metadata (a bearer token is checked once, when it
opens) and the structure header. A load balancer routing by structure (deploy/haproxy) pins
each stream to the server that holds its structure's plan, as it does unary calls. A request
made inside an active OpenTelemetry span goes as a unary call, which carries that span's
context.
"""

import itertools
import math
import queue
import threading
import time
from collections import OrderedDict

import grpc
from google.rpc import status_pb2

from gradserve.client import replies, structure
from gradserve.client.channel import with_headers
from gradserve.v1.wire_format import VARINT, delimited_header, varint

METHOD = "/gradserve.v1.GradientService/Train"
_ID, _REQUEST, _TIMEOUT_MS = 1, 2, 3  # TrainRequest's field numbers
_DETAILS_KEY = "grpc-status-details-bin"


class StreamedStatus(grpc.RpcError):
    """A request on the stream failed: its status, read as a failed unary call's error
    (``code()``, ``details()``, and the rich details in ``trailing_metadata()``)."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self._status = status

    def code(self) -> grpc.StatusCode:
        for code in grpc.StatusCode:
            if code.value[0] == self._status.code:
                return code
        return grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        return self._status.message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return ((_DETAILS_KEY, self._status.SerializeToString()),)


def request_message(request_id: int, request: bytes, timeout: float | None) -> bytes:
    """A TrainRequest around the serialized EvaluateRequest ``request``."""
    message = varint(_ID << 3 | VARINT) + varint(request_id)
    message += delimited_header(_REQUEST, len(request)) + request
    if timeout is not None:
        message += varint(_TIMEOUT_MS << 3 | VARINT) + varint(max(1, round(timeout * 1e3)))
    return message


def _overdue(timeout: float) -> StreamedStatus:
    return StreamedStatus(
        status_pb2.Status(
            code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
            message=f"no answer on the Train stream within the timeout of {timeout:g} s",
        )
    )


class Overdue:
    """Ends the streams whose answer is overdue, from one thread per Client.

    The thread sleeps until the earliest request in progress is due. A request that is
    answered leaves its time behind, so a training loop's requests, each due later than
    the last, wake the thread about once per timeout rather than once per request."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._due: dict[TrainStream, float] = {}
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None
        self._closed = False

    # The request carries its timeout, and a server that is alive answers DEADLINE_EXCEEDED
    # itself once it has passed (and stops the work, logging why). The stream is ended only
    # if not even that answer comes within this much longer: ending it at the timeout would
    # race that answer, and the server would see a cancel instead.
    GRACE_S = 1.0

    def watch(self, stream: "TrainStream", timeout: float) -> None:
        """End ``stream`` (``TrainStream.expire``) if ``done`` is not called within
        ``timeout`` seconds and the grace."""
        due = time.monotonic() + timeout + self.GRACE_S
        with self._changed:
            self._due[stream] = due
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gradserve-train-timeouts", daemon=True
                )
                self._thread.start()
            elif due < self._wake_at:
                self._changed.notify()

    def done(self, stream: "TrainStream") -> None:
        with self._changed:
            self._due.pop(stream, None)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _run(self) -> None:
        with self._changed:
            while not self._closed:
                now = time.monotonic()
                for stream, due in list(self._due.items()):
                    if due <= now:
                        del self._due[stream]
                        stream.expire()
                self._wake_at = min(self._due.values(), default=math.inf)
                self._changed.wait(None if self._wake_at == math.inf else self._wake_at - now)


class TrainStream:
    """One Client's stream; ``evaluate`` sends a request on it when it can."""

    def __init__(self, channel: grpc.Channel, overdue: Overdue) -> None:
        self._open_call = with_headers(
            channel.stream_stream(METHOD, response_deserializer=replies.read)
        )
        self._overdue = overdue
        self._expired = False  # set by the Overdue thread: the answer did not come in time
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._requests: queue.SimpleQueue | None = None
        self._responses = None
        self.unsupported = False  # the server answered UNIMPLEMENTED: it has no Train

    def evaluate(self, request: bytes, timeout: float | None, metadata) -> replies.Answer | None:
        """Evaluate's reply to ``request`` over the stream (``replies.Answer``); None when
        the stream is busy with another thread's request or the server has no Train (send it
        unary then)."""
        if self.unsupported or not self._lock.acquire(blocking=False):
            return None
        try:
            reused = self._responses is not None
            try:
                return self._exchange(request, timeout, metadata)
            except grpc.RpcError as error:
                if isinstance(error, StreamedStatus):
                    raise
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self.unsupported = True
                    return None
                if not reused:
                    raise
            # The stream, open since an earlier request, broke (its server restarted, its
            # connection was closed): evaluation has no side effects, so ask again anew.
            return self._exchange(request, timeout, metadata)
        finally:
            self._lock.release()

    def _exchange(self, request: bytes, timeout: float | None, metadata) -> replies.Answer:
        if self._responses is None:
            self._requests = queue.SimpleQueue()
            headers = (*metadata, *structure.metadata(request))  # the first request's
            self._responses = self._open_call(iter(self._requests.get, None), metadata=headers)
        request_id = next(self._ids)
        self._expired = False
        if timeout is not None:
            self._overdue.watch(self, timeout)
        self._requests.put(request_message(request_id, request, timeout))
        try:
            reply_id, status, results = next(self._responses)
        except BaseException:  # the stream failed, ended or was interrupted: start anew
            self.close()
            if self._expired:
                raise _overdue(timeout) from None
            raise
        finally:
            if timeout is not None:
                self._overdue.done(self)
        if self._expired:  # answered as it was being ended: the stream cannot go on
            self.close()
        if reply_id != request_id:
            self.close()
            raise StreamedStatus(
                status_pb2.Status(
                    code=grpc.StatusCode.INTERNAL.value[0],
                    message=f"the Train stream answered request {reply_id}, not {request_id}",
                )
            )
        if status:
            raise StreamedStatus(status_pb2.Status.FromString(status))
        return results

    def expire(self) -> None:
        """The answer is overdue: end the stream, which fails the request waiting on it."""
        self._expired = True
        responses = self._responses
        if responses is not None:
            responses.cancel()

    def idle(self) -> bool:
        """No request is on the stream now."""
        return not self._lock.locked()

    def close(self) -> None:
        """End the stream (a new one opens at the next request)."""
        if self._requests is not None:
            self._requests.put(None)  # ends the request iterator, and grpc's thread reading it
        if self._responses is not None:
            self._responses.cancel()
        self._requests = self._responses = None


class TrainStreams:
    """A Client's Train streams, one per graph structure, the ``MAX_OPEN`` most recently used
    kept open; ``evaluate`` as ``TrainStream.evaluate``."""

    MAX_OPEN = 8

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._lock = threading.Lock()
        self._streams: OrderedDict[tuple, TrainStream] = OrderedDict()
        self._overdue = Overdue()
        self.unsupported = False

    def evaluate(self, request: bytes, timeout: float | None, metadata) -> replies.Answer | None:
        if self.unsupported:
            return None
        key = structure.metadata(request)
        with self._lock:
            stream = self._streams.get(key)
            if stream is None:
                stream = self._streams[key] = TrainStream(self._channel, self._overdue)
            else:
                self._streams.move_to_end(key)
            if len(self._streams) > self.MAX_OPEN:
                self._close_idle_beyond(self.MAX_OPEN)
        try:
            return stream.evaluate(request, timeout, metadata)
        finally:
            self.unsupported = self.unsupported or stream.unsupported

    def _close_idle_beyond(self, count: int) -> None:
        """Close the least recently used streams past ``count`` that no thread is using."""
        for key in list(self._streams)[: max(0, len(self._streams) - count)]:
            if self._streams[key].idle():
                self._streams.pop(key).close()

    def close(self) -> None:
        with self._lock:
            streams, self._streams = list(self._streams.values()), OrderedDict()
        for stream in streams:
            stream.close()
        self._overdue.close()
