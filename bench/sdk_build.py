"""How long the SDK takes to record a node: the target is at most 0.15 us per node.

Builds graphs the way users do (the two-moons example's MLP loss, and a long chain)
and reports the recording time per node, the best of a few repeats, in CPU time: recording
is single-threaded, and on the project's shared 2-core machines wall time mostly measures
the other processes. No server is needed: recording is purely local. It says which
recording core ran: the compiled one, or the Python one (GRADSERVE_PURE_PYTHON=1).
Run: uv run python bench/sdk_build.py
"""

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from mlp_two_moons import MLP, loss_and_accuracy, two_moons

from gradserve.client import Value, recording

TARGET_US = 0.15


def chain(n: int) -> Value:
    y = Value(0.5)
    for _ in range(n):
        y = y * 1.0001 + 0.1
    return y


def per_node_us(build) -> tuple[float, int]:
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        out = build()
        elapsed = time.process_time() - started
        nodes = len(out._tape)
        best = min(best, elapsed)
        del out
    return best / nodes * 1e6, nodes


def main() -> None:
    print(f"recording core: {'compiled' if recording.COMPILED else 'Python'}")
    model = MLP(2, [16, 16, 1], random.Random(0))
    points, labels = two_moons(64, noise=0.1, seed=0)
    for name, build in [
        (
            "two-moons MLP 2-16-16-1 loss, 64 points",
            lambda: loss_and_accuracy(model, points, labels)[0],
        ),
        ("chain y*c+c x 100,000", lambda: chain(100_000)),
    ]:
        us, nodes = per_node_us(build)
        verdict = "ok" if us <= TARGET_US else "over target"
        print(f"{name}: {nodes:,} nodes, {us:.2f} us/node ({verdict}, target {TARGET_US})")


if __name__ == "__main__":
    main()
