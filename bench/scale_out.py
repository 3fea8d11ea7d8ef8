"""Throughput through HAProxy with three servers, against one server direct.

``uv run python -m bench.scale_out [--clients 16] [--seconds 20]``: client processes each
run an SDK training loop over five graph structures (tests/test_scale_out.py's models),
first against one `gradserve serve --workers 1` directly, then through the balancer
(deploy/haproxy/haproxy.cfg) in front of three. Prints calls/s and p99 of each as a
Markdown table for BENCHMARKS.md. Needs HAProxy (Debian's haproxy package).

Every server here shares the same cores, so on a small machine the ratio shows the
balancer's overhead rather than scale.
"""

import argparse
import math
import multiprocessing
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from bench import servers
from bench.balancer import Balancer

STRUCTURES = 5


def _client(target: str, ready, seconds: float) -> tuple[list[float], int, str]:
    """Training steps over every structure in turn for ``seconds`` once every client is
    ``ready`` (a barrier: on a loaded machine, starting a process takes seconds); each step's
    gradient is checked against the closed form. (latencies, errors, first error)."""
    from gradserve.client import Client, Value

    latencies, errors, first_error = [], 0, ""
    weights = [[0.1 * (i - 1) for i in range(k)] for k in range(1, STRUCTURES + 1)]
    with Client(target, timeout=60) as client:
        ready.wait()
        end_at = time.monotonic() + seconds
        kind = 0
        while time.monotonic() < end_at:
            w = [Value(v) for v in weights[kind]]
            s = Value(0.2)
            for i, weight in enumerate(w):
                s = s + 0.3 * (i + 1) * weight
            loss = s.tanh()
            started = time.perf_counter()
            try:
                client.backward(loss)
                latencies.append(time.perf_counter() - started)
                t = math.tanh(0.2 + sum(0.3 * (i + 1) * v for i, v in enumerate(weights[kind])))
                if not math.isclose(w[-1].grad, (1 - t * t) * 0.3 * len(w), rel_tol=1e-12):
                    raise ValueError("a gradient differs from the closed form")
            except Exception as exc:  # counted, not raised: the run goes on
                errors += 1
                first_error = first_error or str(exc)[:200]
            weights[kind] = [v * 0.999 for v in weights[kind]]
            kind = (kind + 1) % STRUCTURES
    return latencies, errors, first_error


def run(target: str, clients: int, seconds: float) -> dict:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(clients) as pool:
        ready = manager.Barrier(clients)
        results = pool.starmap(_client, [(target, ready, seconds)] * clients)
    latencies = [x for lat, _, _ in results for x in lat]
    return {
        "calls_per_s": len(latencies) / seconds,
        "p99_ms": float(np.percentile(latencies, 99)) * 1e3 if latencies else float("nan"),
        "errors": sum(e for _, e, _ in results),
        "first_error": next((f for _, _, f in results if f), ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with servers.gradserve(workers=1) as server:
        direct = run(server.target, args.clients, args.seconds)
    with ExitStack() as stack:
        started = [stack.enter_context(servers.gradserve(workers=1)) for _ in range(3)]
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        balancer = stack.enter_context(Balancer([s.target for s in started], workdir))
        balanced = run(balancer.target, args.clients, args.seconds)
    print(f"{args.clients} client processes, {args.seconds:g} s each way\n")
    print("| | calls/s | p99 | errors |\n|---|---:|---:|---:|")
    for name, outcome in (("one server, direct", direct), ("HAProxy + 3 servers", balanced)):
        print(
            f"| {name} | {outcome['calls_per_s']:,.0f} | {outcome['p99_ms']:.1f} ms "
            f"| {outcome['errors']} |"
        )
    if direct["calls_per_s"]:
        ratio = balanced["calls_per_s"] / direct["calls_per_s"]
        print(f"\nthroughput ratio (balanced / direct): {ratio:.2f}x")
    for outcome in (direct, balanced):
        if outcome["first_error"]:
            print("first error:", outcome["first_error"])


if __name__ == "__main__":
    main()
