"""A bounded soak on loopback: many clients, a mix of calls, statuses, latency and memory.

    uv run python bench/soak.py [--clients 32] [--seconds 60] [--warmup 10] [--abusers]
                                [--abusers-only stalled,wide_hvp]

It starts ``gradserve serve`` on a free port, runs the clients for the given time, each
repeatedly making one of: a small valid Evaluate, a large valid EvaluateStream, an invalid
graph (expects INVALID_ARGUMENT), a stream cancelled after its first chunk (expects
CANCELLED). It prints counts, p50/p99 latency per kind, any unexpected status, and the
server's resident memory after warm-up and at the end. It exits 1 on an unexpected status
or when memory grew more than 10% after warm-up (the least resident memory of the last
FLOOR_WINDOW_S of the run against that of the first after warm-up).

With ``--abusers`` it runs twice on fresh servers, without and then with abusive clients
beside the legitimate ones (bench/abusers.py: half-open calls, never-read streams, stalled
HTTP/2 readers, oversized batches, and issue 19's: distinct-label plans, partial request
bodies, gzip bombs, one connection's pipeline, a wide HVP, chunks of one, rapid reset), and
compares the legitimate clients' success rate and p99 latency and the server's peak memory;
``--abusers-only`` runs a subset of them, to find which one moves the figures.
The goal (issues 11 and 19): 100% success, a p99 at most twice the undisturbed one, and a
peak memory within the server's idle size plus its budget; it exits 1 otherwise. A server
whose memory passes ``--memory-cap-mb`` is killed, to protect the machine, and the run
counts as failed.

The abusers run in a process of their own (``AbusersProcess``), at ``--abuser-nice``
(default 0, the bench's own priority): an attacker's clients run on the attacker's
machines. Run in the bench's process, as before 2026-12-07 16:00 UTC, their Python threads
shared one GIL with the 32 legitimate clients, whose latency then measured the abusers'
Python as much as the server; a higher niceness further models that the attacker's CPU is
not the server's (on this 2-core machine every process shares the same two cores). The
abusers' outcome counts are printed, to show how much abuse each run carried, and the CPU
time the server, the legitimate clients' process and the abusers' process each used.
"""

import argparse
import contextlib
import math
import os
import platform
import random
import re
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import grpc
import numpy as np

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.abusers import KINDS, AbusersProcess, check_kinds
from bench.ports import free_port
from bench.servers import ServerProcess, gradserve_alone
from gradserve.client import connect
from gradserve.v1 import gradserve_pb2 as pb

BUDGET_MIB = 1024  # the server's default --max-memory-mb
# Growth is judged between the least resident memory of the first and of the last this many
# seconds of the clients' run after warm-up: one sample at each end swung by +-15% with the
# large calls in flight at that instant (2026-12-08, calm phases of -4.0% and +14.6%).
FLOOR_WINDOW_S = 10.0


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


LEDGER = {  # the server's own account of what it holds, from its metrics (MiB)
    "budget": "gradserve_memory_budget_used_bytes",
    "arriving": "gradserve_arriving_used_bytes",
    "plans": "gradserve_plan_cache_bytes",
}


HELD_BY_KIND = re.compile(  # the budget's holders by kind (service/admission.py)
    r"^gradserve_memory_budget_(held_bytes|holding_calls)"
    r'\{method="([^"]*)",state="([^"]*)"\} (\S+)$',
    re.MULTILINE,
)


def ledger(metrics_port: int) -> tuple[dict[str, float], dict[tuple[str, str], tuple[float, int]]]:
    """What the server's ledger holds now, in MiB, read from its metrics endpoint; and who
    holds the budget: MiB and calls by (method, what the call does now)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    held = {}
    for name, metric in LEDGER.items():
        found = re.search(rf"^{metric} (\S+)$", text, re.MULTILINE)
        held[name] = float(found[1]) / 2**20 if found else math.nan
    holders: dict[tuple[str, str], list] = defaultdict(lambda: [0.0, 0])
    for metric, method, state, value in HELD_BY_KIND.findall(text):
        if metric == "held_bytes":
            holders[(method, state)][0] = float(value) / 2**20
        else:
            holders[(method, state)][1] = int(float(value))
    return held, {kind: (mib, calls) for kind, (mib, calls) in holders.items() if calls}


def holders_text(holders: dict[tuple[str, str], tuple[float, int]]) -> str:
    """Who holds the budget, the most first: "EvaluateStream sending 128 MiB (8 calls)"."""
    ranked = sorted(holders.items(), key=lambda item: -item[1][0])
    return (
        "; ".join(
            f"{method} {state} {mib:.0f} MiB ({calls} call{'s' * (calls != 1)})"
            for (method, state), (mib, calls) in ranked
        )
        or "nothing"
    )


class MemoryCap:
    """Kills the server once its resident memory passes ``cap_mib``; meanwhile notes the
    server's ledger (``ledger``) at the highest resident memory seen, who held the budget
    at its fullest, on average, and just after a legitimate call was refused for memory
    (``refused``)."""

    REFUSALS_KEPT = 3  # who held the budget at the first refusals

    def __init__(self, server: ServerProcess, cap_mib: float, metrics_port: int) -> None:
        self.server, self.cap_mib, self.metrics_port = server, cap_mib, metrics_port
        self.killed_at_mib: float | None = None
        self.highest = (0.0, {})  # (resident MiB, the ledger then)
        self.most_held: Counter = Counter()  # the most each part of the ledger held
        self.fullest = (0.0, {})  # (budget MiB held, who held it then)
        self.holders_sum: Counter = Counter()  # MiB by kind, summed over the samples
        self.samples = 0
        self.at_refusals: list[dict] = []  # who held the budget just after a refusal
        self.refusal = threading.Event()
        self.resident: list[tuple[float, float]] = []  # (monotonic time, resident MiB)
        self.stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def floor(self, since: float, until: float) -> float:
        """The least resident memory sampled between ``since`` and ``until`` (monotonic
        times): the server's own size then, without the calls that happened to be in
        flight at one instant (a large stream's evaluation is about 20 MiB)."""
        return min((mib for at, mib in self.resident if since <= at <= until), default=math.nan)

    def refused(self) -> None:
        """A legitimate call was refused for memory: note who holds the budget now."""
        if len(self.at_refusals) < self.REFUSALS_KEPT:
            self.refusal.set()

    def _watch(self) -> None:
        read_ledger_at = 0.0
        while not self.stop.wait(0.02) and self.server.process.poll() is None:
            try:
                rss = self.server.memory_mib()
            except (OSError, AttributeError):
                return
            self.resident.append((time.monotonic(), rss))
            if rss > self.cap_mib:
                self.killed_at_mib = rss
                self.server.process.kill()
                return
            refusal = self.refusal.is_set()
            if rss > self.highest[0] or time.monotonic() > read_ledger_at or refusal:
                read_ledger_at = time.monotonic() + 0.5
                with contextlib.suppress(OSError):
                    held, holders = ledger(self.metrics_port)
                    self._note(rss, held, holders, refusal)

    def _note(self, rss: float, held: dict, holders: dict, refusal: bool) -> None:
        if refusal:
            self.refusal.clear()
            self.at_refusals.append(holders)
        if rss > self.highest[0]:
            self.highest = (rss, held)
        for name, mib in held.items():
            self.most_held[name] = max(self.most_held[name], mib)
        if held["budget"] > self.fullest[0]:
            self.fullest = (held["budget"], holders)
        self.samples += 1
        for kind, (mib, _calls) in holders.items():
            self.holders_sum[kind] += mib


EXPECTED = {
    "small": grpc.StatusCode.OK,
    "large": grpc.StatusCode.OK,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "cancelled": grpc.StatusCode.CANCELLED,
}


class Soak:
    def __init__(self, stub, large_leaves: int, on_refused=lambda: None) -> None:
        rng = np.random.default_rng(0)
        self.stub = stub
        self.on_refused = on_refused  # called when a call is refused for memory
        self.small = pb.EvaluateRequest(graph=small_graph(rng))
        self.large = pb.EvaluateRequest(graph=wide_graph(large_leaves, rng), chunk_size=16_384)
        self.invalid = pb.EvaluateRequest(graph=invalid_graph(rng))
        self.lock = threading.Lock()
        self.latencies = defaultdict(list)
        self.statuses = Counter()
        self.unexpected = Counter()
        self.details: dict = {}  # the first message of each (kind, status) that failed

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
            if "of server memory" in (error.details() or ""):  # refused by the budget
                self.on_refused()
            self.details.setdefault((kind, error.code().name), (error.details() or "")[:200])
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


def _own_cpu_seconds() -> float:
    """The CPU time (user and system, all threads) this process has used so far."""
    user, system = os.times()[:2]
    return user + system


class Phase:
    """One soak on a fresh server, with or without abusers beside the clients."""

    def __init__(self, args: argparse.Namespace, abusive: bool) -> None:
        self.abusive = abusive
        self.load = [os.getloadavg()[0]]  # the 1-minute load average at the start and the end
        metrics_port = free_port()
        server = gradserve_alone("--metrics-port", str(metrics_port))
        port = server.port
        self.idle = server.memory_mib()
        cap = self.cap = MemoryCap(server, args.memory_cap_mb, metrics_port)
        channel, stub = connect(server.target)
        self.soak = Soak(stub, args.large_leaves, cap.refused)
        abusers = AbusersProcess(port, args.abuser_nice, args.abusers_only) if abusive else None
        try:
            if abusers:
                abusers.__enter__()
            started, cpu_before = time.monotonic(), (server.cpu_seconds(), _own_cpu_seconds())
            stop_at = started + args.seconds
            clients = [
                threading.Thread(target=self.soak.client, args=(stop_at, seed))
                for seed in range(args.clients)
            ]
            for thread in clients:
                thread.start()
            time.sleep(args.warmup)
            warm = time.monotonic()
            for thread in clients:
                thread.join()
            window = min(FLOOR_WINDOW_S, (stop_at - warm) / 2)
            self.after_warmup = cap.floor(warm, warm + window)
            self.at_end = cap.floor(stop_at - window, stop_at)
            self.wall_s = time.monotonic() - started
            self.cpu_s = {
                "the server": server.cpu_seconds() - cpu_before[0],
                "the legitimate clients' process": _own_cpu_seconds() - cpu_before[1],
            }
            self.peak = server.memory_mib("VmHWM")
            self.load.append(os.getloadavg()[0])
        finally:
            if abusers:
                abusers.__exit__(None, None, None)
            cap.stop.set()
            channel.close()
            server.stop()
        self.killed_at_mib = cap.killed_at_mib
        self.outcomes = dict(abusers.outcomes) if abusers else {}
        if abusers:
            self.cpu_s["the abusers' process"] = abusers.cpu_s
        latencies = [t for kind in EXPECTED for t in self.soak.latencies[kind]]
        self.p99_ms = float(np.percentile(np.array(latencies) * 1e3, 99)) if latencies else math.nan
        total = sum(self.soak.statuses.values())
        self.success = (total - sum(self.soak.unexpected.values())) / total if total else 0.0

    def report(self, args: argparse.Namespace) -> None:
        load = f"load average {self.load[0]:.1f} at the start, {self.load[-1]:.1f} at the end"
        print(("with" if self.abusive else "without") + f" abusers ({load}):")
        all_latencies = []
        for kind in EXPECTED:
            times = np.array(self.soak.latencies[kind]) * 1e3
            all_latencies += self.soak.latencies[kind]
            if times.size:
                print(
                    f"  {kind:9s} calls={times.size:6d} p50={np.percentile(times, 50):8.1f} ms "
                    f"p99={np.percentile(times, 99):8.1f} ms"
                )
        total = sum(self.soak.statuses.values())
        print(f"  all       calls={total:6d} p99={self.p99_ms:.1f} ms success={self.success:.2%}")
        print(f"  statuses: {dict(self.soak.statuses)}")
        unexpected = self.soak.unexpected
        print(f"  unexpected statuses: {sum(unexpected.values())} {dict(unexpected)}")
        for key in unexpected:
            print(f"    first {key}: {self.soak.details.get(key, '')}")
        print(
            f"  server RSS (least over {FLOOR_WINDOW_S:g} s): {self.after_warmup:.0f} MiB after "
            f"warm-up, {self.at_end:.0f} MiB at the end ({self.growth:+.1%}), peak "
            f"{self.peak:.0f} MiB"
        )
        rss, held = self.cap.highest
        print(
            f"  the server's ledger at the highest resident memory sampled ({rss:.0f} MiB): "
            + ", ".join(f"{name} {mib:.0f}" for name, mib in held.items())
            + " MiB; the most each held: "
            + ", ".join(f"{name} {mib:.0f}" for name, mib in self.cap.most_held.items())
            + " MiB"
        )
        budget_mib, holders = self.cap.fullest
        print(
            f"  who held the budget at its fullest ({budget_mib:.0f} MiB): {holders_text(holders)}"
        )
        samples = max(self.cap.samples, 1)
        average = {kind: (mib / samples, 0) for kind, mib in self.cap.holders_sum.items()}
        print(
            f"  on average over {self.cap.samples} samples: "
            + "; ".join(
                f"{method} {state} {mib:.0f} MiB"
                for (method, state), (mib, _) in sorted(average.items(), key=lambda i: -i[1][0])
                if mib >= 0.5
            )
        )
        for holders in self.cap.at_refusals:
            refused = "  who held the budget just after a legitimate call's refusal: "
            print(refused + holders_text(holders))
        cores = len(os.sched_getaffinity(0))
        print(
            "  CPU used over the run: "
            + ", ".join(f"{who} {seconds:.1f} s" for who, seconds in self.cpu_s.items())
            + f", of {cores} cores x {self.wall_s:.0f} s = {cores * self.wall_s:.0f} s"
        )
        if self.killed_at_mib is not None:
            print(f"  KILLED: server memory passed {args.memory_cap_mb:g} MiB")
        if self.abusive:
            print(f"  abusers' calls ended as: {self.outcomes}")

    @property
    def growth(self) -> float:
        return (self.at_end - self.after_warmup) / self.after_warmup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--large-leaves", type=int, default=100_000)
    parser.add_argument(
        "--abusers", action="store_true", help="compare runs without and with abusive clients"
    )
    parser.add_argument(
        "--abusers-only",
        type=lambda text: text.split(","),
        help=f"with --abusers, run only these (comma-separated) of: {', '.join(KINDS)}",
    )
    parser.add_argument(
        "--abuser-nice",
        type=int,
        default=0,
        help="niceness added to the abusers' process (default 0: the bench's own priority)",
    )
    parser.add_argument(
        "--memory-cap-mb",
        type=float,
        default=6144,
        help="kill the server if its resident memory passes this (default 6144)",
    )
    args = parser.parse_args()
    try:
        check_kinds(args.abusers_only)
    except ValueError as error:
        parser.error(str(error))
    args.abusers = args.abusers or bool(args.abusers_only)

    phases = [Phase(args, abusive=False)]
    if args.abusers:
        phases.append(Phase(args, abusive=True))
    print(
        f"machine: {platform.node()} {platform.machine()}, {platform.python_version()}, "
        f"{len(os.sched_getaffinity(0))} cores; date {time.strftime('%F %T %Z')}"
    )
    print(
        f"{args.clients} clients, {args.seconds:g} s, large graph {args.large_leaves} leaves, "
        f"abusers' process at nice +{args.abuser_nice}"
        + (f", abusers: {','.join(args.abusers_only)}" if args.abusers_only else "")
    )
    for phase in phases:
        phase.report(args)
    calm = phases[0]
    failed = bool(calm.soak.unexpected) or not calm.growth <= 0.10 or calm.killed_at_mib
    if args.abusers:
        abused = phases[1]
        ratio = abused.p99_ms / calm.p99_ms
        print(
            f"legitimate clients beside the abusers: success {abused.success:.2%} "
            f"(without: {calm.success:.2%}), p99 {ratio:.2f}x, peak memory "
            f"{abused.peak:.0f} MiB (without: {calm.peak:.0f} MiB; idle {abused.idle:.0f} MiB "
            f"+ budget {BUDGET_MIB} MiB = {abused.idle + BUDGET_MIB:.0f} MiB)"
        )
        failed = failed or abused.success < 1 or not ratio <= 2 or abused.killed_at_mib
        failed = failed or abused.peak > abused.idle + BUDGET_MIB
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
