"""W5's load: client processes, each alternating between requests for a fixed time.

Processes rather than threads: one Python process cannot send faster than its one thread of
Python at a time, so 16 client threads would measure the client's GIL, not the server. They
are spawned (not forked) because the parent already holds gRPC channels.
"""

import multiprocessing
import time
from dataclasses import dataclass

import grpc
import numpy as np

from bench.measure import within_tolerance
from gradserve.client import connect
from gradserve.v1 import gradserve_pb2 as pb


def _start_delay(clients: int) -> float:
    """Seconds for every client process to start (import NumPy and gRPC) before the clock."""
    return 1.0 + 0.5 * clients


@dataclass
class Outcome:
    calls: int
    errors: int
    first_error: str
    p99_ms: list[float]  # per request kind


def _client(target, requests: list[bytes], expected, start_at: float, seconds: float):
    """Send the requests in turn from ``start_at`` for ``seconds``; a reply that differs from
    ``expected`` counts as an error. Returns (latencies per kind, errors, first error)."""
    messages = [pb.EvaluateRequest.FromString(data) for data in requests]
    latencies: list[list[float]] = [[] for _ in messages]
    errors, first_error = 0, ""
    channel, stub = connect(target)
    with channel:
        time.sleep(max(0.0, start_at - time.time()))
        end_at = start_at + seconds  # wall clock, shared by every client
        kind = 0
        while time.time() < end_at:
            started = time.perf_counter()
            try:
                reply = stub.Evaluate(messages[kind])
                latencies[kind].append(time.perf_counter() - started)
                if not within_tolerance(np.array(reply.grads), expected[kind]):
                    raise ValueError("a reply's gradients differ from a single call's")
            except (grpc.RpcError, ValueError) as exc:
                errors += 1
                first_error = first_error or str(exc)[:200]
            kind = (kind + 1) % len(messages)
    return latencies, errors, first_error


def run_clients(target: str, requests, expected, clients: int, seconds: float) -> Outcome:
    """Run ``clients`` client processes against ``target`` and pool their results."""
    start_at = time.time() + _start_delay(clients)
    payload = [r.SerializeToString() for r in requests]
    arguments = [(target, payload, expected, start_at, seconds)] * clients
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        results = pool.starmap(_client, arguments)
    per_kind = [
        [seconds for latencies, _, _ in results for seconds in latencies[k]]
        for k in range(len(requests))
    ]
    errors = sum(e for _, e, _ in results)
    first_error = next((f for _, _, f in results if f), "")
    p99 = [float(np.percentile(k, 99)) * 1e3 if k else float("nan") for k in per_kind]
    return Outcome(sum(map(len, per_kind)), errors, first_error, p99)
