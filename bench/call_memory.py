"""What one large call costs the engine: what admission charges it, the peak of its evaluation
and reply (tracemalloc), its CPU time, and the allocation sites at that peak.

    uv run python bench/call_memory.py [--sites 12] [NAME ...]

NAME is one of ``REQUESTS`` (all by default): the wide HVP and the oversized batches exactly
as bench/abusers.py builds them. Each request goes through the server's own steps in
process (decode, plan, job, the charge ``servicer._admit_job`` makes with a default budget,
``Evaluator.unary_reply``), without grpc, each time on a cold plan: once for the peak,
once for the CPU time, then twice with ops that sample the memory in use as they are
called (and at each stop check), the second time taking a tracemalloc snapshot at the
highest sample, whose allocation sites, grouped by line, say which arrays are held there
(the peak inside an op call is higher: the first figure is the true one).
"""

import argparse
import dataclasses
import gc
import sys
import time
import tracemalloc
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.abusers import long_chain_many_rows, repeated_nodes, wide_hvp
from gradserve.server.engine.plan_cache import PlanCache
from gradserve.server.engine.run import Engine
from gradserve.server.registry import load_registry
from gradserve.server.service import evaluation
from gradserve.server.service.limits import Limits

MIB = 2**20
CALLS_BUDGET = 512 * MIB  # a default server's budget for calls (--memory-budget 1024 MiB)


REQUESTS = {
    "wide-hvp": wide_hvp,
    "long-chain-rows": long_chain_many_rows,
    "oversized-reply": lambda: repeated_nodes(200_000, rows=1_000),
}


class _Sampler:
    """A stop check that records the memory in use at each poll and at each op call (with
    its arguments made: ``_sampled_ops``), and snapshots it at the sample numbered
    ``snapshot_at``."""

    def __init__(self, snapshot_at: int | None = None) -> None:
        self.polls: list[int] = []
        self.snapshot_at = snapshot_at
        self.snapshot = None

    def __call__(self) -> bool:
        if not tracemalloc.is_tracing():
            return False
        if len(self.polls) == self.snapshot_at:
            self.snapshot = tracemalloc.take_snapshot()
        self.polls.append(tracemalloc.get_traced_memory()[0])
        return False


SAMPLER: list[_Sampler] = []  # the run's sampler, which the ops' wrappers call


def _sampled_ops() -> dict:
    """The server's ops, each array function sampling the memory in use as it is called."""

    def sampled(function):
        def call(*args):
            if SAMPLER:
                SAMPLER[0]()
            return function(*args)

        return call

    ops = {}
    for name, loaded in load_registry().items():
        functions = ("forward", "backward", "second")
        changes = {f: sampled(getattr(loaded.op, f)) for f in functions if getattr(loaded.op, f)}
        ops[name] = dataclasses.replace(loaded.op, **changes, formulas=None)
    return ops


def _cold_job(name: str, sampled: bool = False):
    """The request's job on a fresh engine (a cold plan, as a new graph's first call has),
    with what admission charges before and for evaluating it; with ``sampled``, ops that
    sample the memory as they are called (their wrappers copy each call's arguments once
    more: 8 MB for a million of them, so the peak is measured without them)."""
    ops = _sampled_ops() if sampled else {n: op.op for n, op in load_registry().items()}
    engine = Engine(ops, PlanCache(256 * MIB))
    evaluator = evaluation.Evaluator(engine, Limits(), 64 * MIB)
    raw = REQUESTS[name]().SerializeToString()
    request = evaluation.decode(raw)
    charged = {
        "request": evaluation.request_bytes(request),
        "compiling": evaluation.compile_cost(request, len(raw)),
        "raw": len(raw),
    }
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        plan, digest = evaluator.plan(request, _NoSpan(), lambda: False)
        charged["compile peak"] = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    charged["reply"] = evaluator.check_reply_fits(request, plan)  # or LimitExceeded
    job = evaluator.job(request, plan, digest)
    block = job.block_rows(max(CALLS_BUDGET - charged["request"], CALLS_BUDGET // 8), False)
    charged["evaluation"] = job.memory(block, False)
    return evaluator, job, block, charged


def measure(name: str, sites: int) -> None:
    try:
        evaluator, job, block, charged = _cold_job(name)
    except Exception as exc:  # a reply that could never be sent is refused before evaluating
        print(f"{name}: refused before evaluating: {exc}")
        return
    print(
        f"{name}: {charged['raw'] / MIB:.1f} MiB request, {job.plan.node_count:,} nodes, "
        f"{job.rows:,} rows ({block:,} at a time), reply about {charged['reply'] / MIB:.1f} MiB\n"
        f"  charged: request {charged['request'] / MIB:.1f} + compiling "
        f"{charged['compiling'] / MIB:.1f} MiB (compiling's peak "
        f"{charged['compile peak'] / MIB:.1f}), then (the request let go) "
        f"{charged['evaluation'] / MIB:.1f} MiB (the job's arrays {job.arrays_bytes / MIB:.1f}"
        f" and evaluating and replying {(charged['evaluation'] - job.arrays_bytes) / MIB:.1f})"
    )
    peak, _, _ = _run(evaluator, job, block, _Sampler(), traced=True)
    evaluator, job, block, _ = _cold_job(name)
    _, cpu, _ = _run(evaluator, job, block, _Sampler(), traced=False)
    evaluator, job, block, _ = _cold_job(name, sampled=True)
    polls = _run(evaluator, job, block, _Sampler(), traced=True)[2].polls
    evaluating = charged["evaluation"] - job.arrays_bytes
    print(
        f"  measured (cold plan): peak {peak / MIB:.1f} MiB above the job "
        f"(charged {evaluating / max(peak, 1):.2f}x that), CPU {cpu:.2f} s, "
        f"{len(polls)} stop checks and op calls"
    )
    if not sites:
        return
    at = max(range(len(polls)), key=polls.__getitem__)
    evaluator, job, block, _ = _cold_job(name, sampled=True)
    _, _, sampler = _run(evaluator, job, block, _Sampler(at), traced=True)
    print(f"  at sample {at} (stop checks, op calls): {polls[at] / MIB:.1f} MiB traced, by line:")
    for stat in sampler.snapshot.statistics("lineno")[:sites]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"    {stat.size / MIB:8.1f} MiB {stat.count:>9,} blocks  {where}")


class _NoSpan:
    def set_attribute(self, *_):
        pass


def _run(evaluator, job, block, sampler, traced: bool):
    """The reply's peak above what was allocated before (with ``traced``), and CPU time."""
    gc.collect()
    SAMPLER[:] = [sampler]
    if not traced:
        started = time.process_time()
        reply = evaluator.unary_reply(job, block, sampler)
        return 0, time.process_time() - started, sampler
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        started = time.process_time()
        reply = evaluator.unary_reply(job, block, sampler)
        cpu = time.process_time() - started
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    del reply
    return peak, cpu, sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[[], *REQUESTS], default=[])
    parser.add_argument("--sites", type=int, default=12, help="allocation sites to list (0: none)")
    args = parser.parse_args()
    for name in args.names or REQUESTS:
        measure(name, args.sites)


if __name__ == "__main__":
    main()
