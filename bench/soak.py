"""A bounded soak on loopback: many clients, a mix of calls, statuses, latency and memory.

    uv run python bench/soak.py [--clients 32] [--seconds 60] [--warmup 10]

It starts ``gradserve serve`` on a free port, runs the clients for the given time, each
repeatedly making one of: a small valid Evaluate, a large valid EvaluateStream, an invalid
graph (expects INVALID_ARGUMENT), a stream cancelled after its first chunk (expects
CANCELLED). It prints counts, p50/p99 latency per kind, any unexpected status, and the
server's resident memory after warm-up and at the end. It exits 1 on an unexpected status
or when memory grew more than 10% after warm-up.
"""

import argparse
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import grpc
import numpy as np

from gradserve.client import connect
from gradserve.v1 import gradserve_pb2 as pb

GRADSERVE = str(Path(sys.executable).parent / "gradserve")


def wide_graph(leaves: int, rng: np.random.Generator) -> pb.Graph:
    """``leaves`` leaves, their pairwise products, and a sum of those: one deep node."""
    pairs = leaves // 2
    return pb.Graph(
        op_names=["mul", "sum"],
        node_ops=[0] * leaves + [1] * pairs + [2],
        input_counts=[0] * leaves + [2] * pairs + [pairs],
        input_ids=[*range(leaves), *range(leaves, leaves + pairs)],
        leaf_values=rng.uniform(-1, 1, leaves).tolist(),
    )


def small_graph(rng: np.random.Generator) -> pb.Graph:
    graph = wide_graph(8, rng)
    graph.op_names.append("tanh")
    graph.node_ops.append(3)
    graph.input_counts.append(1)
    graph.input_ids.append(len(graph.node_ops) - 2)
    return graph


def invalid_graph(rng: np.random.Generator) -> pb.Graph:
    graph = small_graph(rng)
    graph.input_ids[-1] = len(graph.node_ops) - 1  # the last node reads itself: a cycle
    return graph


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def start_server() -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        # One server process, so that its resident memory is the server's.
        [GRADSERVE, "serve", "--port", "0", "--workers", "1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stderr:
        if match := re.search(r"serving on [\d.]+:(\d+)", line):
            # Keep reading the per-call log lines so that the pipe never fills up.
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
            return process, int(match.group(1))
    raise SystemExit("the server did not start")


EXPECTED = {
    "small": grpc.StatusCode.OK,
    "large": grpc.StatusCode.OK,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "cancelled": grpc.StatusCode.CANCELLED,
}


class Soak:
    def __init__(self, stub, large_leaves: int) -> None:
        rng = np.random.default_rng(0)
        self.stub = stub
        self.small = pb.EvaluateRequest(graph=small_graph(rng))
        self.large = pb.EvaluateRequest(graph=wide_graph(large_leaves, rng), chunk_size=16_384)
        self.invalid = pb.EvaluateRequest(graph=invalid_graph(rng))
        self.lock = threading.Lock()
        self.latencies = defaultdict(list)
        self.statuses = Counter()
        self.unexpected = Counter()

    def one_call(self, kind: str) -> grpc.StatusCode:
        try:
            if kind == "small":
                self.stub.Evaluate(self.small, timeout=30)
            elif kind == "invalid":
                self.stub.Evaluate(self.invalid, timeout=30)
            elif kind == "large":
                for _ in self.stub.EvaluateStream(self.large, timeout=60):
                    pass
            else:
                call = self.stub.EvaluateStream(self.large, timeout=60)
                next(call)
                call.cancel()
                for _ in call:
                    pass
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    def client(self, stop_at: float, seed: int) -> None:
        rng = random.Random(seed)
        kinds = ["small"] * 6 + ["invalid"] * 2 + ["large", "cancelled"]
        while time.monotonic() < stop_at:
            kind = rng.choice(kinds)
            started = time.perf_counter()
            code = self.one_call(kind)
            elapsed = time.perf_counter() - started
            with self.lock:
                self.latencies[kind].append(elapsed)
                self.statuses[(kind, code.name)] += 1
                if code != EXPECTED[kind]:
                    self.unexpected[(kind, code.name)] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--large-leaves", type=int, default=100_000)
    args = parser.parse_args()

    process, port = start_server()
    channel, stub = connect(f"127.0.0.1:{port}")
    soak = Soak(stub, args.large_leaves)
    try:
        started = time.monotonic()
        stop_at = started + args.seconds
        clients = [
            threading.Thread(target=soak.client, args=(stop_at, seed))
            for seed in range(args.clients)
        ]
        for thread in clients:
            thread.start()
        time.sleep(args.warmup)
        after_warmup = rss_mib(process.pid)
        for thread in clients:
            thread.join()
        at_end = rss_mib(process.pid)
    finally:
        channel.close()
        process.terminate()
        process.wait(timeout=30)

    print(
        f"machine: {platform.node()} {platform.machine()}, {platform.python_version()}, "
        f"{len(os.sched_getaffinity(0))} cores; date {time.strftime('%F %T %Z')}"
    )
    print(f"{args.clients} clients, {args.seconds:g} s, large graph {args.large_leaves} leaves")
    all_latencies = []
    for kind in EXPECTED:
        times = np.array(soak.latencies[kind]) * 1e3
        all_latencies += soak.latencies[kind]
        if times.size:
            print(
                f"  {kind:9s} calls={times.size:6d} p50={np.percentile(times, 50):8.1f} ms "
                f"p99={np.percentile(times, 99):8.1f} ms"
            )
    total = sum(soak.statuses.values())
    p99 = np.percentile(np.array(all_latencies) * 1e3, 99)
    print(f"  all       calls={total:6d} p99={p99:.1f} ms")
    print(f"  statuses: {dict(soak.statuses)}")
    print(f"  unexpected statuses: {sum(soak.unexpected.values())} {dict(soak.unexpected)}")
    growth = (at_end - after_warmup) / after_warmup
    print(
        f"  server RSS: {after_warmup:.0f} MiB after warm-up, {at_end:.0f} MiB at the end "
        f"({growth:+.1%})"
    )
    return 1 if soak.unexpected or growth > 0.10 else 0


if __name__ == "__main__":
    sys.exit(main())
