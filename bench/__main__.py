"""Run the benchmark workloads (docs/benchmarks.md) and write the results to BENCHMARKS.md.

A ``--quick`` run's tiny sizes make its figures meaningless (its targets FAIL), so it writes to
build/bench-quick.md instead and refuses to overwrite the committed BENCHMARKS.md.
"""

import argparse
import shlex
import sys
from pathlib import Path

import grpc

from bench import peers
from bench.measure import Report
from bench.report import markdown, write_section
from bench.workloads import FULL, QUICK, WORKLOADS

FULL_OUTPUT = Path("BENCHMARKS.md")
QUICK_OUTPUT = Path("build/bench-quick.md")  # build/ is ignored by git


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per timed measurement (default 3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, for a smoke run in seconds (the figures mean nothing)",
    )
    parser.add_argument(
        "--seconds", type=float, help="how long W5's clients send (default 30, --quick 1)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"(default {FULL_OUTPUT}; with --quick, {QUICK_OUTPUT})",
    )
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = QUICK_OUTPUT if args.quick else FULL_OUTPUT
    elif args.quick and args.output.resolve() == FULL_OUTPUT.resolve():
        parser.error(f"--quick figures mean nothing: write them elsewhere than {FULL_OUTPUT}")
    args.workloads = args.workloads.split(",")
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sizes = QUICK if args.quick else FULL
    if args.seconds is not None:
        sizes = type(sizes)(**{**vars(sizes), "seconds": args.seconds})
    report = Report()
    peer_list = [peers.micrograd_peer()]
    torch = peers.torch_peer()
    if torch is None:
        report.notes.append("PyTorch skipped: `import torch` fails in this environment.")
    else:
        peer_list.append(torch)
        report.notes.append("PyTorch: one 0-d float64 tensor per node, one thread.")
    report.notes += [f"{p.name} {p.version} from {p.origin}" for p in peer_list]
    for name in args.workloads:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            WORKLOADS[name](report, sizes, args.repeats, peer_list)
        except (RuntimeError, grpc.RpcError) as exc:  # a server that failed to start or answer
            print(f"workload {name} failed: {exc}", file=sys.stderr)
            return 2
    report.notes += [
        f"Sizes: {'--quick (tiny, smoke test only)' if args.quick else 'full'}; "
        f"{args.repeats} runs per timed measurement.",
        *NOTES,
    ]
    command = shlex.join(["uv", "run", "python", "-m", "bench", *(argv or sys.argv[1:])])
    write_section(args.output, markdown(report, command))
    print(f"wrote {args.output}", file=sys.stderr)
    if not report.all_agree:
        print("results DISAGREE: see the Agreement table", file=sys.stderr)
        return 1
    return 0


NOTES = [
    "micrograd ran in a thread with a 1 GiB stack and its recursion limit raised to "
    f"{peers.DEEP_RECURSION_LIMIT:,}: its backward sorts the graph recursively, one Python "
    "frame per level of depth (W1 is about 1,200 levels deep, W2 two thirds of its node count), "
    "and Python's default limit is 1,000. W2 cannot run on micrograd without it.",
    "micrograd has no tanh: the harness adds the lecture's (`Value(t, (self,), 'tanh')`, "
    "backward `(1 - t**2) * out.grad`), with t from math.tanh.",
    "Peers build and backpropagate in this process: the time runs from creating the leaves to "
    "the end of backward(). gradserve times run from sending the request to having the leaf "
    "gradients in a NumPy array; the servers run as `gradserve serve --workers N` "
    "subprocesses on loopback. Server time (W2) is the server's own log line: compile (when "
    "cold), evaluate and building the response message, without gRPC's parsing and sending.",
    "W1 peak memory: VmHWM minus VmRSS before the first call, of a fresh `--workers 1` server "
    "that served only W1's calls.",
    "W3: gradserve and the echo are called alternately, call by call, so that both see the "
    "same load from other processes. Every echo has the shape of what it is compared with: "
    "a request of the same length answered with as many bytes as gradserve's answer. The "
    "target: the neuron as a TrainRequest on one open Train stream as the SDK sends it in a "
    "training loop (the plan digest and the leaf values) against such an echo on one open "
    "stream to a grpc.aio server, each message sent once the previous answer came; a row "
    "gives the same with the whole graph in every message. The unary rows compare an "
    "Evaluate call with an echo call.",
    "W4: the separate requests each carry the whole graph and one row, as a client without "
    "batching would send them, one after the other on one channel. The bare gRPC row is the "
    "echo server taking a request and sending a reply of the batch's sizes: no server "
    "answering that batch over gRPC on this machine can be faster.",
    "W5: each client process alternates between W3's neuron and W4's graph on its own channel "
    "(so its own connection, which the kernel assigns to one worker); a reply whose gradients "
    "differ from a single call's counts as an error.",
    "W6: each timed run is a block of steps, micrograd's and gradserve's alternating, from "
    "the same weights; the time per step is the block's mean, so micrograd's includes "
    "collecting its graphs (reference cycles through each node's _backward closure, which "
    "its own training loops leave to the garbage collector; measured apart on this machine,"
    " its median step on the README model took about a quarter of its mean). gradserve's "
    "includes recording, sending (from the second step, the plan digest and leaf values "
    "only, as a message on the client's Train stream), the server's evaluation and filling "
    ".data and .grad. The two-moons step leaves "
    "out demo.ipynb's accuracy, which reads every score's .data.",
    "W7: the same W1 request with and without `leaf_tangents` (one random tangent per leaf), "
    "called alternately, warm; the first pair (compiling, and building the batch scatters) "
    "is not counted. The oracle is first-order gradients at leaves +-h t, h = 1e-3 and 5e-4, "
    "combined by Richardson extrapolation.",
]

if __name__ == "__main__":
    sys.exit(main())
