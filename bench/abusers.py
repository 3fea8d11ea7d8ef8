"""Abusive clients for the soak (issue 11): they run beside the legitimate clients and try,
as a slow, buggy or hostile caller would, to take the shared server down.

- half-open calls: send their headers, never their request message;
- never-read streams: EvaluateStream calls for a million results whose client never reads;
- stalled HTTP/2 readers: raw HTTP/2 clients that ask for a 62 MB reply and keep their
  flow-control window at 0;
- oversized batches: tiny requests for huge arrays (`rows x nodes`), which a server must
  refuse or evaluate within its memory budget.

Each kind keeps its abuse going until ``stop`` is set: a call that the server ends is
replaced by a new one. ``outcomes`` counts how the server ended them.
"""

import itertools
import threading
import time
from collections import Counter

import grpc

from bench.h2_client import H2GrpcClient
from gradserve.v1 import gradserve_pb2 as pb

SERVICE = "/gradserve.v1.GradientService/"
HALF_OPEN_CALLS = 80
NEVER_READ_STREAMS = 8
STALLED_READERS = 20
POLL_S = 0.5  # how often ended abusive calls are replaced


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


class Abusers:
    """The four kinds of abusive clients, each on threads of its own, against ``port``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: Counter = Counter()
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)]
        )
        self.threads = [
            threading.Thread(target=target, name=target.__name__, daemon=True)
            for target in (self._half_open, self._never_read, self._stalled, self._oversized)
        ]

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

        def start():
            return self.channel.stream_stream(next(methods))(never_sent(), timeout=300)

        self._keep_open("half-open", HALF_OPEN_CALLS, start)

    def _never_read(self) -> None:
        request = repeated_nodes(1_000_000)
        stream = self.channel.unary_stream(
            SERVICE + "EvaluateStream", request_serializer=pb.EvaluateRequest.SerializeToString
        )
        self._keep_open("never-read", NEVER_READ_STREAMS, lambda: stream(request, timeout=300))

    def _stalled(self) -> None:
        request = repeated_nodes(3_875, rows=1_000).SerializeToString()  # a 62 MB reply
        clients: list[tuple[H2GrpcClient, int]] = []
        try:
            while not self.stop.is_set():
                while len(clients) < STALLED_READERS and not self.stop.is_set():
                    try:
                        client = H2GrpcClient(self.port, window=0)
                        clients.append((client, client.start_call(SERVICE + "Evaluate", request)))
                    except OSError as error:
                        self._count("stalled-h2", type(error).__name__)
                        self.stop.wait(POLL_S)
                for client, stream_id in list(clients):
                    state = client.streams[stream_id]
                    # Handle what arrived (never opening the window), waiting 10 ms at most.
                    client.pump(lambda s=state: s.finished, time.monotonic() + 0.01)
                    if state.finished or client.terminated is not None:
                        outcome = (
                            "RST_STREAM"
                            if state.reset_code is not None
                            else f"grpc-status {state.grpc_status}"
                            if state.finished
                            else "connection closed"
                        )
                        self._count("stalled-h2", outcome)
                        client.close()
                        clients.remove((client, stream_id))
                self.stop.wait(POLL_S)
        finally:
            for client, _ in clients:
                client.close()

    def _oversized(self) -> None:
        stub = self.channel.unary_unary(
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

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=70)
        self.channel.close()
