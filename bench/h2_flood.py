"""Request bodies still arriving: how much of them a server holds (issue 19).

    uv run python bench/h2_flood.py [--streams 8] [--declared-mb 60] [--send-mb 59]
                                    [--seconds 20] [-- SERVER OPTIONS ...]

It starts ``gradserve serve --workers 1`` (its defaults, plus any options after ``--``),
reads its resident memory when idle, then opens ``--streams`` raw HTTP/2 calls to Evaluate
(one connection each, the ``h2`` package), each declaring a request message of
``--declared-mb`` MiB and sending up to ``--send-mb`` MiB of it, as fast as the server's
flow-control windows let it, and never the rest. A stream the server ends is replaced.
It prints the server's resident memory idle and at its peak (the growth is to stay within
the server's bound for bytes still arriving, ``--max-arriving-mb``), the bytes the senders
got through, how the server ended their calls, and how the calls of a legitimate client
(a small Evaluate every 0.1 s) ended meanwhile. grpc hands a handler only complete
messages: what a partial body costs is decided by the HTTP/2 windows the server announces
and by how many reads it lets wait for their message at once.
"""

import argparse
import socket
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.abuser_memory import legitimate
from bench.h2_client import request_headers
from bench.servers import one_worker

METHOD = "/gradserve.v1.GradientService/Evaluate"
MIB = 2**20


class PartialBody:
    """One connection with one call whose request message never finishes."""

    def __init__(self, port: int, declared: int, to_send: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.stream, request_headers(port, METHOD))
        self.body = memoryview(struct.pack(">?I", False, declared) + bytes(to_send))
        self.sent = 0  # bytes of the body the server's windows let through
        self.outcome: str | None = None  # how the server ended the call, once it has
        self.details = ""  # the grpc-message it ended it with
        self._flush()

    def _flush(self) -> None:
        if outgoing := self.conn.data_to_send():
            self.sock.settimeout(5)
            self.sock.sendall(outgoing)

    def step(self) -> None:
        """Read what the server sent, then send what the windows allow (or wait briefly
        for the server when they allow nothing)."""
        self.receive(0)
        if self.outcome is not None:
            return
        room = min(self.conn.local_flow_control_window(self.stream), len(self.body) - self.sent)
        if room <= 0:
            self.receive(0.05)
            return
        frame = self.conn.max_outbound_frame_size
        for start in range(self.sent, self.sent + room, frame):
            end = min(start + frame, self.sent + room)
            self.conn.send_data(self.stream, bytes(self.body[start:end]))
        self.sent += room
        self._flush()

    def receive(self, timeout: float) -> None:
        """Handle what the server sent, waiting up to ``timeout`` s for it."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65_536)
        except (TimeoutError, BlockingIOError):
            return
        if not chunk:
            self.outcome = "connection closed"
            return
        for event in self.conn.receive_data(chunk):
            if self.outcome is not None:
                break
            if isinstance(event, h2.events.StreamReset):
                self.outcome = f"reset {event.error_code}"
            elif isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                headers = dict(event.headers)
                if (status := headers.get(b"grpc-status")) is not None:
                    self.outcome = f"grpc-status {int(status)}"
                    self.details = unquote(headers.get(b"grpc-message", b"").decode())
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.outcome = "GOAWAY"
        self._flush()

    def close(self) -> None:
        self.sock.close()


def flood(port: int, declared: int, to_send: int, stop: threading.Event, totals: Counter):
    """One sender: a partial body at a time, replaced when the server ends it."""
    while not stop.is_set():
        try:
            body = PartialBody(port, declared, to_send)
        except OSError as error:
            totals[type(error).__name__] += 1
            stop.wait(0.2)
            continue
        try:
            while not stop.is_set() and body.outcome is None:
                body.step()
        except (OSError, h2.exceptions.H2Error) as error:
            body.outcome = type(error).__name__
        finally:
            totals["bytes sent"] += body.sent
            totals[body.outcome or "open at the end"] += 1
            body.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--declared-mb", type=int, default=60)
    parser.add_argument("--send-mb", type=int, default=59)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("server_options", nargs="*", help="after --: gradserve serve options")
    args = parser.parse_args()
    with one_worker(args.server_options) as server:
        time.sleep(1)
        idle = server.memory_kib("VmRSS") / 1024
        stop, totals = threading.Event(), Counter()
        senders = [
            threading.Thread(
                target=flood,
                args=(server.port, args.declared_mb * MIB, args.send_mb * MIB, stop, totals),
                daemon=True,
            )
            for _ in range(args.streams)
        ]
        legitimate_outcomes: Counter = Counter()
        senders.append(
            threading.Thread(
                target=legitimate, args=(server.port, stop, legitimate_outcomes), daemon=True
            )
        )
        for sender in senders:
            sender.start()
        time.sleep(args.seconds)
        stop.set()
        for sender in senders:
            sender.join(timeout=15)
        peak = server.memory_kib("VmHWM") / 1024
    sent = totals.pop("bytes sent", 0) / MIB
    print(
        f"{args.streams} partial bodies of {args.declared_mb} MiB for {args.seconds:g} s "
        f"({' '.join(args.server_options) or 'defaults'}): RSS idle {idle:.0f} MiB, peak "
        f"{peak:.0f} MiB (+{peak - idle:.0f}); {sent:,.0f} MiB sent; calls ended: "
        f"{dict(totals)}; a legitimate client's calls: {dict(legitimate_outcomes)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
