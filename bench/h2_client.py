"""A raw HTTP/2 gRPC client whose flow control its caller controls (the ``h2`` package).

Used by the resilience tests (tests/test_resilience_waiting.py) and by the soak's abusive
clients (bench/abusers.py).

grpc's own clients always read what the server sends: they cannot play a peer that stalls a
reply by keeping its flow-control window shut, which is what a hostile or broken client
does. This one speaks just enough gRPC over HTTP/2 for that: it opens one connection,
sends HEADERS with the gRPC headers and one length-prefixed request message per stream,
announces the initial stream window its caller chose, and sends WINDOW_UPDATE only when told
to. What comes back on each stream (headers, data, trailers, RST_STREAM) is recorded. Every
wait is bounded by a deadline.
"""

import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings


def request_headers(
    port: int, method: str, metadata: Sequence[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    """The HEADERS of a gRPC call to ``method`` on loopback ``port``."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", f"127.0.0.1:{port}"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *metadata,
    ]


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    """A gRPC length-prefixed message: the compressed flag, 4-byte big-endian length, payload."""
    return struct.pack(">?I", compressed, len(payload)) + payload


@dataclass
class StreamState:
    """What the server sent on one stream so far."""

    headers: list[tuple[bytes, bytes]] | None = None
    data_bytes: int = 0
    trailers: dict[bytes, bytes] | None = None
    reset_code: int | None = None  # the RST_STREAM error code, if the server reset it
    ended: bool = False
    connection_closed: bool = False  # the server closed the connection with the stream open
    data: bytearray = field(default_factory=bytearray)

    @property
    def finished(self) -> bool:
        return self.ended or self.reset_code is not None or self.connection_closed

    @property
    def grpc_status(self) -> int | None:
        source = self.trailers or dict(self.headers or ())  # trailers-only replies
        status = source.get(b"grpc-status")
        return int(status) if status is not None else None


class H2GrpcClient:
    """One HTTP/2 connection to a gRPC server on loopback.

    ``window`` is the initial flow-control window of every stream we open (0 means the
    server may send no DATA at all until we say so). The connection's own window stays at
    the protocol's 65,535 bytes and is never enlarged, so data we do not acknowledge stays
    unacknowledged. ``keep_data`` keeps the DATA bytes received (for small replies).
    """

    def __init__(
        self, port: int, *, window: int = 65_535, timeout: float = 10, keep_data: bool = False
    ) -> None:
        self.port = port
        self.keep_data = keep_data
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.conn.initiate_connection()
        self.streams: dict[int, StreamState] = {}
        self.pings = 0  # PINGs the server sent (not the acks of ours)
        self.terminated: h2.events.ConnectionTerminated | None = None
        self._flush()

    def start_call(
        self,
        method: str,
        request: bytes,
        metadata: Sequence[tuple[str, str]] = (),
        compressed: bool = False,
    ) -> int:
        """Open a stream for ``method`` (e.g. "/pkg.Service/Method"), send ``request`` as the
        call's one message (flagged ``compressed``, in the encoding ``metadata`` names) and
        end our side; the stream id."""
        stream_id = self.open_stream(method, metadata)
        self._send_body(stream_id, grpc_message(request, compressed))
        return stream_id

    def start_partial_call(self, method: str, declared: int, sent: int) -> int:
        """Open a stream whose one message declares ``declared`` bytes, send ``sent`` of
        them and never the rest (the stream stays open); the stream id."""
        stream_id = self.open_stream(method)
        body = struct.pack(">?I", False, declared) + bytes(sent)
        self._send_body(stream_id, body, end=False)
        return stream_id

    def reset(self, stream_id: int) -> None:
        """Cancel the stream (RST_STREAM, CANCEL)."""
        self.conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
        self._flush()

    def open_stream(self, method: str, metadata: Sequence[tuple[str, str]] = ()) -> int:
        """Send the HEADERS of a new call to ``method``; the stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, request_headers(self.port, method, metadata))
        self.streams[stream_id] = StreamState()
        self._flush()
        return stream_id

    def _send_body(self, stream_id: int, body: bytes, timeout: float = 30, end: bool = True):
        """Send ``body`` and (when ``end``) end the stream, as fast as the server's windows
        allow."""
        deadline = time.monotonic() + timeout
        view = memoryview(body)
        while True:
            room = min(
                self.conn.local_flow_control_window(stream_id),
                self.conn.max_outbound_frame_size,
                len(view),
            )
            if room or not view:
                last = end and room == len(view)
                self.conn.send_data(stream_id, bytes(view[:room]), end_stream=last)
                self._flush()
                view = view[room:]
                if not view:
                    return
            else:
                self.pump(lambda: self.conn.local_flow_control_window(stream_id) > 0, deadline)

    def open_window(self, stream_id: int, increment: int) -> None:
        """Let the server send ``increment`` more bytes on the stream and on the connection."""
        self.conn.increment_flow_control_window(increment, stream_id=stream_id)
        self.conn.increment_flow_control_window(increment)
        self._flush()

    def pump(self, until: Callable[[], bool], deadline: float) -> bool:
        """Read and handle frames until ``until()`` holds or the monotonic ``deadline`` passes;
        whether it holds."""
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.terminated is not None:
                return until()
            self.sock.settimeout(min(remaining, 0.5))
            try:
                chunk = self.sock.recv(65_536)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if not chunk:  # the server closed the connection
                self.terminated = self.terminated or h2.events.ConnectionTerminated()
                for state in self.streams.values():
                    state.connection_closed = not (state.ended or state.reset_code is not None)
                return until()
            try:
                self._handle(self.conn.receive_data(chunk))
            except h2.exceptions.ProtocolError:
                if self.conn.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                    raise
                # After a GOAWAY, h2 takes no more frames, although the server may still
                # finish the streams it had: read on until it closes the connection.
                continue
            self._flush()
        return True

    def wait_finished(self, stream_id: int, timeout: float) -> bool:
        """Whether the stream ended (trailers or reset) within ``timeout`` seconds."""
        return self.pump(lambda: self.streams[stream_id].finished, time.monotonic() + timeout)

    def _handle(self, events) -> None:
        for event in events:
            state = self.streams.get(getattr(event, "stream_id", None))
            if isinstance(event, h2.events.ResponseReceived) and state:
                state.headers = list(event.headers)
            elif isinstance(event, h2.events.DataReceived) and state:
                state.data_bytes += len(event.data)
                if self.keep_data:
                    state.data += event.data
            elif isinstance(event, h2.events.TrailersReceived) and state:
                state.trailers = dict(event.headers)
            elif isinstance(event, h2.events.StreamEnded) and state:
                state.ended = True
            elif isinstance(event, h2.events.StreamReset) and state:
                state.reset_code = event.error_code
            elif isinstance(event, h2.events.PingReceived):
                self.pings += 1

    def _flush(self) -> None:
        if outgoing := self.conn.data_to_send():
            self.sock.sendall(outgoing)

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self._flush()
        except OSError:
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
