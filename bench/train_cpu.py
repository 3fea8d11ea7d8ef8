"""The server's CPU time per Train message, in process: the handler's Python alone.

`uv run python bench/train_cpu.py` serves one Train stream of N messages, all read at once
from a stand-in grpc context, through the real servicer (memory budget, read slots, the
call's limits and log checks: a server as `gradserve serve` makes it; with ``--metrics``,
as with ``--metrics-port``), and prints this thread's CPU time per message, best of R
streams. The messages are the
neuron as the SDK sends it in a training loop (W3: the plan digest and the leaf values)
and micrograd's README model's loss (W6: 398 nodes by plan digest, every node's results
back). A hot loop: in a real server each message also pays grpc, the kernel and cold
caches (BENCHMARKS.md, "Issue 22: where the time goes"), so compare two builds with it,
alternately, rather than with a bench row.
"""

import argparse
import asyncio
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import graphs
from bench.training import README_XS, README_YS
from gradserve.client import nn
from gradserve.client.calls import backward_call
from gradserve.server.engine.plan_cache import PlanCache
from gradserve.server.engine.run import Engine
from gradserve.server.registry import load_registry
from gradserve.server.service.admission import MemoryBudget
from gradserve.server.service.arrival import ArrivalGate
from gradserve.server.service.calls import ServerState
from gradserve.server.service.limits import Limits
from gradserve.server.service.metrics import CallMetrics
from gradserve.server.service.servicer import GradientServicer
from gradserve.v1 import gradserve_pb2 as pb

MEMORY = 2**30
MESSAGE_BYTES = 2**26


class MessagesContext:
    """A Train call's grpc context that reads ``messages``, then the half-close, each at
    once, and counts what is written."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = iter(messages)
        self.written: list[bytes] = []

    async def read(self):
        return next(self.messages, grpc.aio.EOF)

    async def write(self, message: bytes) -> None:
        self.written.append(message)

    def time_remaining(self):
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def neuron() -> pb.EvaluateRequest:
    columns = graphs.mlp(graphs.NEURON_SHAPE, graphs.NEURON_LEAVES)
    return pb.EvaluateRequest(graph=columns.graph(), selection=pb.SELECTION_LEAVES)


def readme_model() -> pb.EvaluateRequest:
    """The README's MLP(3, [4, 4, 1]) loss on its four samples, as the SDK's backward sends it."""
    random.seed(1)
    model = nn.MLP(3, [4, 4, 1])
    loss = sum((model(x) - y) ** 2 for x, y in zip(README_XS, README_YS, strict=True))
    return pb.EvaluateRequest.FromString(backward_call(loss).request)


WORKLOADS = {"neuron": neuron, "readme": readme_model}


def servicer(metrics: bool) -> GradientServicer:
    """A servicer as `gradserve serve` makes one; call on its event loop."""
    state = ServerState(
        Limits(),
        MemoryBudget(MEMORY, reserved=MEMORY // 4, arriving=MEMORY // 4),
        ThreadPoolExecutor(max_workers=1),
        threads=1,
        metrics=CallMetrics() if metrics else None,
        arrival=ArrivalGate(MEMORY // 4, MESSAGE_BYTES),
    )
    state.on_loop()
    registry = load_registry()
    engine = Engine({name: loaded.op for name, loaded in registry.items()}, PlanCache(2**26))
    return GradientServicer(registry, engine, state, MESSAGE_BYTES)


async def train(served: GradientServicer, messages: list[bytes]) -> list[bytes]:
    context = MessagesContext(messages)
    await served.Train(None, context)
    return context.written


def by_digest(request: pb.EvaluateRequest, digest: bytes) -> pb.EvaluateRequest:
    """The request as a training loop's later steps send it: the digest and leaf values."""
    named = pb.EvaluateRequest()
    named.CopyFrom(request)
    named.ClearField("graph")
    named.graph.leaf_values.extend(request.graph.leaf_values)
    named.plan_digest = digest
    return named


async def _servicer(metrics: bool) -> GradientServicer:
    return servicer(metrics)


def microseconds_per_message(
    name: str, messages: int, streams: int, metrics: bool = False
) -> list[float]:
    """Each stream's thread CPU time per message, once the structure's program is compiled
    (on its second call)."""
    loop = asyncio.new_event_loop()
    try:
        served = loop.run_until_complete(_servicer(metrics))
        request = WORKLOADS[name]()
        whole = pb.TrainRequest(id=0, request=request).SerializeToString()
        answers = loop.run_until_complete(train(served, [whole] * 2))
        expected = pb.TrainResponse.FromString(answers[-1]).response
        digest = expected.plan_digest
        message = pb.TrainRequest(id=1, request=by_digest(request, digest)).SerializeToString()
        figures = []
        for _ in range(streams):
            started = time.thread_time()
            written = loop.run_until_complete(train(served, [message] * messages))
            figures.append((time.thread_time() - started) / messages * 1e6)
            if len(written) != messages or any(
                pb.TrainResponse.FromString(answer).response != expected for answer in written
            ):
                raise RuntimeError(f"the {name} stream did not answer every message as the first")
        return figures
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="neuron,readme")
    parser.add_argument("--messages", type=int, default=3_000, help="messages per stream")
    parser.add_argument("--streams", type=int, default=15, help="streams per workload")
    parser.add_argument("--metrics", action="store_true", help="record metrics, as a server does")
    options = parser.parse_args()
    for name in options.workloads.split(","):
        figures = sorted(
            microseconds_per_message(name, options.messages, options.streams, options.metrics)
        )
        print(
            f"{name}: {figures[0]:.1f} µs CPU per message at best, median "
            f"{figures[len(figures) // 2]:.1f} ({options.streams} streams of "
            f"{options.messages:,} messages{', metrics on' if options.metrics else ''})"
        )


if __name__ == "__main__":
    main()
