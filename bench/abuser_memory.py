"""What each abusive client of bench/abusers.py costs a default server, alone.

    uv run python bench/abuser_memory.py [--seconds 20] [--settle 35] [KIND ...]

For each kind (all by default) it starts a fresh `gradserve serve --workers 1` with its
defaults, reads the server's resident memory when idle, runs that abuser alone for
``--seconds`` beside one legitimate client (a small Evaluate every 0.1 s, counting how its
calls end), stops the abuser, waits ``--settle`` seconds (longer than the request and send
timeouts, so that what the server still holds is what the attack leaves behind) and reads
the memory again. It prints one line per kind: resident memory idle, at peak and after
(malloc keeps up to 1 GiB of freed memory for the next call, README "Running it safely"),
what the server still holds by its own ledger (the memory budget in use and its holders,
the plan cache), the legitimate client's outcomes, and how the server ended the abuser's
calls.
"""

import argparse
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.abusers import KINDS, Abusers, check_kinds
from bench.servers import gradserve_alone
from bench.soak import holders_text, ledger, small_graph
from gradserve.client import connect
from gradserve.v1 import gradserve_pb2 as pb


def gauges(metrics_port: int) -> str:
    """The server's budget in use and plan cache, in MiB, and who holds the budget, from its
    metrics."""
    held, holders = ledger(metrics_port)
    return (
        f"budget in use {held['budget']:.1f} MiB (held by {holders_text(holders)}), "
        f"plan cache {held['plans']:.1f} MiB"
    )


def legitimate(port: int, stop: threading.Event, outcomes: Counter) -> None:
    request = pb.EvaluateRequest(graph=small_graph(np.random.default_rng(0)))
    channel, stub = connect(f"127.0.0.1:{port}")
    with channel:
        while not stop.wait(0.1):
            try:
                stub.Evaluate(request, timeout=10)
                outcomes["OK"] += 1
            except grpc.RpcError as error:
                outcomes[error.code().name] += 1


def measure(kind: str, seconds: float, settle: float, metrics_port: int) -> str:
    server = gradserve_alone("--metrics-port", str(metrics_port))
    port = server.port
    try:
        time.sleep(1)
        idle = server.memory_mib()
        abusers = Abusers(port, [kind])
        stop, outcomes = threading.Event(), Counter()
        client = threading.Thread(target=legitimate, args=(port, stop, outcomes), daemon=True)
        client.start()
        with abusers:
            time.sleep(seconds)
        stop.set()
        client.join()
        time.sleep(settle)
        peak, left = server.memory_mib("VmHWM"), server.memory_mib()
        return (
            f"{kind:18s} RSS idle {idle:5.0f}, peak {peak:5.0f}, after {left:5.0f} "
            f"MiB; {gauges(metrics_port)}; legitimate {dict(outcomes)}; "
            f"abuser {dict(abusers.outcomes)}"
        )
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--settle", type=float, default=35)
    parser.add_argument("--metrics-port", type=int, default=9187)
    parser.add_argument("kinds", nargs="*", help=f"abusers, of: {', '.join(KINDS)}")
    args = parser.parse_args()
    kinds = [kind.lstrip("_") for kind in args.kinds] or KINDS  # "_stalled" as before
    check_kinds(kinds)
    for kind in kinds:
        print(measure(kind, args.seconds, args.settle, args.metrics_port), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
