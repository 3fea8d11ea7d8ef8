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


@dataclass
class Outcome:
    calls: int
    errors: int
    first_error: str
    p99_ms: list[float]  # per request kind


def _client(target, requests: list[bytes], expected, ready, seconds: float):
    """Send the requests in turn for ``seconds`` once every client is ``ready`` (a barrier:
    on a loaded machine a spawned process takes seconds to start); a reply that differs from
    ``expected`` counts as an error. Returns (latencies per kind, errors, first error)."""
    messages = [pb.EvaluateRequest.FromString(data) for data in requests]
    latencies: list[list[float]] = [[] for _ in messages]
    errors, first_error = 0, ""
    channel, stub = connect(target)
    with channel:
        ready.wait()
        end_at = time.monotonic() + seconds
        kind = 0
        while time.monotonic() < end_at:
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
    payload = [r.SerializeToString() for r in requests]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(clients) as pool:
        ready = manager.Barrier(clients)
        arguments = [(target, payload, expected, ready, seconds)] * clients
        results = pool.starmap(_client, arguments)
    per_kind = [
        [seconds for latencies, _, _ in results for seconds in latencies[k]]
        for k in range(len(requests))
    ]
    errors = sum(e for _, e, _ in results)
    first_error = next((f for _, _, f in results if f), "")
    p99 = [float(np.percentile(k, 99)) * 1e3 if k else float("nan") for k in per_kind]
    return Outcome(sum(map(len, per_kind)), errors, first_error, p99)
