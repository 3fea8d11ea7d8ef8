"""Abusive clients for the soak (issue 11): they run beside the legitimate clients and try,
as a slow, buggy or hostile caller would, to take the shared server down.

- half-open calls: send their headers, never their request message;
- never-read streams: EvaluateStream calls for a million results whose client never reads;
- stalled HTTP/2 readers: raw HTTP/2 clients that ask for a 62 MB reply and keep their
  flow-control window at 0;
- oversized batches: tiny requests for huge arrays (`rows x nodes`), which a server must
  refuse or evaluate within its memory budget.

and issue 19's:

- distinct labels: 1-node graphs, each with a distinct 1 MB label (plans outlive calls);
- partial bodies: raw HTTP/2 streams declaring a 60 MB request, sending 59 MB, never the end;
- gzip bombs: 64 KB gzip requests that inflate to 63 MB;
- one connection's pipeline: 200 calls on one raw HTTP/2 connection that never reads;
- a wide HVP: tangents through a `sum` of a million inputs;
- chunks of one: EvaluateStream of one node selected a million times, chunk_size 1;
- rapid reset: streams opened and reset at once on one connection, as fast as it goes.

Each kind keeps its abuse going until ``stop`` is set: a call that the server ends is
replaced by a new one. ``outcomes`` counts how the server ended them.

``AbusersProcess`` runs them all in a process of their own, at a lower CPU priority if
asked: an attacker's clients run on the attacker's machines, so neither their Python (the
GIL of the process whose legitimate clients are being timed) nor their CPU is the
server's. bench/soak.py uses it; the memory bench and the tests use ``Abusers`` in process.
"""

import gzip
import itertools
import math
import multiprocessing
import os
import queue
import threading
import time
from collections import Counter

import grpc
import h2.exceptions

from bench.h2_client import H2GrpcClient
from gradserve.v1 import gradserve_pb2 as pb

SERVICE = "/gradserve.v1.GradientService/"
HALF_OPEN_CALLS = 80
NEVER_READ_STREAMS = 8
STALLED_READERS = 20
PARTIAL_BODIES = 8
PIPELINED_CALLS = 200
POLL_S = 0.5  # how often ended abusive calls are replaced
GZIP_BOMBS = 4  # at a time: about 8 a second (grpc's client, compressing each, sent 3-4)
KINDS = (  # each names a method of Abusers, less its leading underscore
    "half_open",
    "never_read",
    "stalled",
    "oversized",
    "distinct_labels",
    "partial_bodies",
    "gzip_bombs",
    "pipelined",
    "wide_hvp",
    "chunks_of_one",
    "rapid_reset",
)


def check_kinds(kinds: list[str] | None) -> None:
    """Raise ``ValueError`` naming any of ``kinds`` that is not in ``KINDS``."""
    unknown = set(kinds or ()) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown abusers {sorted(unknown)}; known: {', '.join(KINDS)}")


def repeated_nodes(count: int, rows: int = 1) -> pb.EvaluateRequest:
    """x and y = -x, with node 0 asked for ``count`` times over ``rows`` rows."""
    graph = pb.Graph(
        op_names=["neg"],
        node_ops=[0, 1],
        input_counts=[0, 1],
        input_ids=[0],
        leaf_values=[0.5 + r for r in range(rows)],
    )
    return pb.EvaluateRequest(graph=graph, nodes=[0] * count, rows=rows)


def long_chain_many_rows(length: int = 1_000, rows: int = 100_000) -> pb.EvaluateRequest:
    """A leaf and ``length`` neg nodes over ``rows`` rows: 0.8 MB asking for 1.6 GB."""
    graph = pb.Graph(
        op_names=["neg"],
        node_ops=[0] + [1] * length,
        input_counts=[0] + [1] * length,
        input_ids=range(length),
        leaf_values=[1.0 + r / rows for r in range(rows)],
    )
    return pb.EvaluateRequest(graph=graph, nodes=[0], rows=rows)


def wide_hvp(inputs: int = 1_000_000) -> pb.EvaluateRequest:
    """Tangents through a sum of ``inputs`` leaves, squared, in one row: a 20 MB request
    whose op calls take a million arguments each."""
    graph = pb.Graph(
        op_names=["sum", "mul"],
        node_ops=[0] * inputs + [1, 2],
        input_counts=[0] * inputs + [inputs, 2],
        input_ids=[*range(inputs), inputs, inputs],
        leaf_values=[0.5] * inputs,
    )
    return pb.EvaluateRequest(
        graph=graph, leaf_tangents=[1.0] * inputs, selection=pb.SELECTION_NODES, nodes=[0]
    )


class Abusers:
    """Every kind of abusive client (or those of ``kinds``, names from ``KINDS``), each on
    threads of its own, against ``port``."""

    def __init__(self, port: int, kinds: list[str] | None = None) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: Counter = Counter()
        self.channels: list[grpc.Channel] = []
        check_kinds(kinds)
        self.threads = [
            threading.Thread(target=getattr(self, "_" + kind), name=kind, daemon=True)
            for kind in KINDS
            if kinds is None or kind in kinds
        ]

    def _channel(self) -> grpc.Channel:
        """A channel on a connection of its own, for one kind of abuser: on one shared
        connection the kinds queued behind the 80 half-open calls, and grpc core refused
        their streams (REFUSED_STREAM, seen as UNAVAILABLE; BENCHMARKS.md, "What ended the
        abusers' calls UNAVAILABLE"), so the soak ran less of them than it claimed. grpc
        shares one connection between channels of the same target and options unless each
        has a subchannel pool of its own."""
        channel = grpc.insecure_channel(
            f"127.0.0.1:{self.port}",
            options=[
                ("grpc.max_receive_message_length", -1),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self.channels.append(channel)
        return channel

    def _count(self, kind: str, outcome: str) -> None:
        with self.lock:
            self.outcomes[(kind, outcome)] += 1

    def _keep_open(self, kind: str, count: int, start_call) -> None:
        """Keep ``count`` calls made by ``start_call()`` open, replacing those that end."""
        calls = [start_call() for _ in range(count)]
        while not self.stop.wait(POLL_S):
            for i, call in enumerate(calls):
                if call.done():
                    self._count(kind, call.code().name)
                    calls[i] = start_call()
        for call in calls:
            call.cancel()

    def _half_open(self) -> None:
        def never_sent():
            self.stop.wait()
            yield from ()

        methods = itertools.cycle([SERVICE + "Evaluate", SERVICE + "EvaluateStream"])

        channel = self._channel()

        def start():
            return channel.stream_stream(next(methods))(never_sent(), timeout=300)

        self._keep_open("half-open", HALF_OPEN_CALLS, start)

    def _never_read(self) -> None:
        request = repeated_nodes(1_000_000)
        stream = self._channel().unary_stream(
            SERVICE + "EvaluateStream", request_serializer=pb.EvaluateRequest.SerializeToString
        )
        self._keep_open("never-read", NEVER_READ_STREAMS, lambda: stream(request, timeout=300))

    def _keep_h2_calls(self, kind: str, count: int, start) -> None:
        """Keep ``count`` raw HTTP/2 calls open, each a client and its stream from
        ``start()``, handling what arrives (never opening a window it keeps at 0) and
        replacing the calls that the server ends."""
        clients: list[tuple[H2GrpcClient, int]] = []
        try:
            while not self.stop.is_set():
                while len(clients) < count and not self.stop.is_set():
                    try:
                        clients.append(start())
                    except (OSError, TimeoutError, h2.exceptions.H2Error) as error:
                        # the server may end a stream while its body is still being sent
                        self._count(kind, type(error).__name__)
                        self.stop.wait(POLL_S)
                for client, stream_id in list(clients):
                    state = client.streams[stream_id]
                    client.pump(lambda s=state: s.finished, time.monotonic() + 0.01)
                    if state.finished or client.terminated is not None:
                        self._count(kind, _how_it_ended(state))
                        client.close()
                        clients.remove((client, stream_id))
                self.stop.wait(POLL_S)
        finally:
            for client, _ in clients:
                client.close()

    def _stalled(self) -> None:
        request = repeated_nodes(3_875, rows=1_000).SerializeToString()  # a 62 MB reply

        def start() -> tuple[H2GrpcClient, int]:
            client = H2GrpcClient(self.port, window=0)
            return client, client.start_call(SERVICE + "Evaluate", request)

        self._keep_h2_calls("stalled-h2", STALLED_READERS, start)

    def _oversized(self) -> None:
        stub = self._channel().unary_unary(
            SERVICE + "Evaluate", request_serializer=pb.EvaluateRequest.SerializeToString
        )
        requests = {
            "oversized-reply": repeated_nodes(200_000, rows=1_000),
            "long-chain-rows": long_chain_many_rows(),
        }
        while not self.stop.is_set():
            for kind, request in requests.items():
                try:
                    stub(request, timeout=60)
                    self._count(kind, "OK")
                except grpc.RpcError as error:
                    self._count(kind, error.code().name)

    def _calls(self, kind: str, call) -> None:
        """``call()`` again and again until stopped, counting how each ends."""
        while not self.stop.is_set():
            try:
                call()
                self._count(kind, "OK")
            except grpc.RpcError as error:
                self._count(kind, error.code().name)

    def _distinct_labels(self) -> None:
        stub = self._channel().unary_unary(
            SERVICE + "Evaluate", request_serializer=pb.EvaluateRequest.SerializeToString
        )
        numbers = itertools.count()

        def call():
            graph = pb.Graph(node_ops=[0], input_counts=[0], leaf_values=[1.0])
            graph.labels.append(f"{next(numbers):09d}" + "x" * 2**20)
            stub(pb.EvaluateRequest(graph=graph), timeout=30)

        self._calls("distinct-labels", call)

    def _partial_bodies(self) -> None:
        """Streams that declare 60 MB and send 59 MB of it, replaced once the server ends
        them (its request timeout)."""

        def start() -> tuple[H2GrpcClient, int]:
            client = H2GrpcClient(self.port)
            return client, client.start_partial_call(SERVICE + "Evaluate", 60 * 2**20, 59 * 2**20)

        self._keep_h2_calls("partial-body", PARTIAL_BODIES, start)

    def _gzip_bombs(self) -> None:
        """Gzip requests that would inflate 1000x, compressed once here: grpc's own client
        compressed every call's 63 MB again, most of a core of this 2-core machine (10.7 s
        of CPU in 12 s, for 41 calls) that a real attacker spends on its own machine and
        that the soak took from the server and the legitimate clients."""
        bomb = pb.EvaluateRequest(graph=pb.Graph(node_ops=[0], input_counts=[0]))
        bomb.graph.leaf_values.extend(bytes(63 * 2**20 // 8))  # zeros: inflate 1000x
        compressed = gzip.compress(bomb.SerializeToString(), compresslevel=9)
        del bomb

        def start() -> tuple[H2GrpcClient, int]:
            client = H2GrpcClient(self.port)
            encoding = [("grpc-encoding", "gzip")]
            return client, client.start_call(
                SERVICE + "Evaluate", compressed, encoding, compressed=True
            )

        self._keep_h2_calls("gzip-bomb", GZIP_BOMBS, start)

    def _pipelined(self) -> None:
        """One connection that never reads opens PIPELINED_CALLS calls for 1 MB replies, or as
        many as the server's limit on streams per connection lets it."""
        request = repeated_nodes(70_000).SerializeToString()
        while not self.stop.is_set():
            try:
                with H2GrpcClient(self.port, window=0) as client:
                    streams = []
                    for _ in range(PIPELINED_CALLS):
                        try:
                            streams.append(client.start_call(SERVICE + "Evaluate", request))
                        except h2.exceptions.StreamClosedError:  # ended while being sent
                            self._count("pipelined", "StreamClosedError")
                        except h2.exceptions.TooManyStreamsError:  # the server's stream limit
                            self._count("pipelined", "TooManyStreamsError")
                            break
                    deadline = time.monotonic() + 60
                    while not self.stop.is_set() and time.monotonic() < deadline:
                        client.pump(lambda: False, time.monotonic() + POLL_S)
                    for stream_id in streams:
                        state = client.streams[stream_id]
                        self._count("pipelined", f"grpc-status {state.grpc_status}")
            except (OSError, TimeoutError) as error:
                self._count("pipelined", type(error).__name__)
                self.stop.wait(POLL_S)

    def _wide_hvp(self) -> None:
        request = wide_hvp()
        stub = self._channel().unary_unary(
            SERVICE + "Evaluate", request_serializer=pb.EvaluateRequest.SerializeToString
        )
        self._calls("wide-hvp", lambda: stub(request, timeout=60))

    def _chunks_of_one(self) -> None:
        request = repeated_nodes(1_000_000)
        request.chunk_size = 1
        stream = self._channel().unary_stream(
            SERVICE + "EvaluateStream", request_serializer=pb.EvaluateRequest.SerializeToString
        )
        self._calls("chunks-of-one", lambda: [None for _ in stream(request, timeout=60)])

    def _rapid_reset(self) -> None:
        """Streams opened and reset at once on one connection, as fast as one thread can."""
        while not self.stop.is_set():
            try:
                with H2GrpcClient(self.port) as client:
                    for _ in range(10_000):
                        if self.stop.is_set():
                            break
                        client.reset(client.open_stream(SERVICE + "Evaluate"))
                        if len(client.streams) % 100 == 0:  # read what came back, briefly
                            client.pump(lambda: False, time.monotonic() + 0.001)
                self._count("rapid-reset", "10k streams")
            except (OSError, TimeoutError, h2.exceptions.ProtocolError) as error:
                self._count("rapid-reset", type(error).__name__)
                self.stop.wait(POLL_S)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=70)
        for channel in self.channels:
            channel.close()


class AbusersProcess:
    """Every kind of ``Abusers`` (or those of ``kinds``) against ``port``, in a child process
    at ``nice`` (added to this process's niceness); ``outcomes``, and ``cpu_s``, the CPU
    time the abusers' own clients used (on this machine, taken from what the server and
    the legitimate clients could have had), are filled in once it has stopped."""

    def __init__(self, port: int, nice: int = 0, kinds: list[str] | None = None) -> None:
        check_kinds(kinds)  # an unknown kind fails here, not in the child
        context = multiprocessing.get_context("spawn")  # no grpc state forked into it
        self.stop = context.Event()
        self.results = context.Queue()
        self.process = context.Process(
            target=_abuse_until_stopped,
            args=(port, nice, kinds, self.stop, self.results),
            name="abusers",
            daemon=True,
        )
        self.outcomes: Counter = Counter()
        self.cpu_s = math.nan

    def __enter__(self):
        self.process.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        try:
            outcomes, self.cpu_s = self.results.get(timeout=120)
            self.outcomes.update(outcomes)
        except queue.Empty:
            self.outcomes["abuser process: no outcomes"] += 1
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()


def _abuse_until_stopped(port: int, nice: int, kinds, stop, results) -> None:
    """The child of ``AbusersProcess``: abuse until ``stop`` is set, then send the counts."""
    os.nice(nice)
    abusers = Abusers(port, kinds)
    with abusers:
        stop.wait()
    user, system = os.times()[:2]
    results.put((dict(abusers.outcomes), user + system))


def _how_it_ended(state) -> str:
    """How the server ended a raw HTTP/2 call: a gRPC status (grpc may reset the stream after
    it, which the status says more about), a reset alone, or the connection."""
    if state.grpc_status is not None:
        return f"grpc-status {state.grpc_status}"
    return "RST_STREAM" if state.reset_code is not None else "connection closed"
