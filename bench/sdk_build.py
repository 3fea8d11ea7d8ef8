"""How long the SDK takes to record a node: the target is at most 1.5 us per node.

Builds graphs the way users do (a micrograd-style MLP forward and loss, and a long chain)
and reports the recording time per node, the best of a few repeats. No server is needed:
recording is purely local. Run: uv run python bench/sdk_build.py
"""

import random
import time

from gradserve.client import Value

TARGET_US = 1.5


def mlp_loss(params: list[Value], rows: list[tuple[float, float, float]]) -> Value:
    """A 2-16-16-1 tanh MLP's squared loss over ``rows`` of (x1, x2, y)."""
    sizes = [2, 16, 16, 1]
    loss = Value(0.0)
    for x1, x2, y in rows:
        activations = [x1, x2]
        k = 0
        for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
            layer = []
            for _ in range(fan_out):
                total = params[k]  # the bias
                for x in activations:
                    k += 1
                    total = total + params[k] * x
                k += 1
                layer.append(total.tanh())
            activations = layer
        loss = loss + (activations[0] - y) ** 2
    return loss


def chain(n: int) -> Value:
    y = Value(0.5)
    for _ in range(n):
        y = y * 1.0001 + 0.1
    return y


def per_node_us(build) -> tuple[float, int]:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        out = build()
        elapsed = time.perf_counter() - started
        nodes = len(out._tape)
        best = min(best, elapsed)
        del out
    return best / nodes * 1e6, nodes


def main() -> None:
    rng = random.Random(0)
    params = [Value(rng.uniform(-1, 1)) for _ in range(2 * 16 + 16 + 16 * 16 + 16 + 16 + 1)]
    rows = [(rng.uniform(-1, 1), rng.uniform(-1, 1), rng.choice((-1.0, 1.0))) for _ in range(64)]
    for name, build in [
        ("mlp 2-16-16-1 x 64 rows", lambda: mlp_loss(params, rows)),
        ("chain y*c+c x 100,000", lambda: chain(100_000)),
    ]:
        us, nodes = per_node_us(build)
        verdict = "ok" if us <= TARGET_US else "over target"
        print(f"{name}: {nodes:,} nodes, {us:.2f} us/node ({verdict}, target {TARGET_US})")


if __name__ == "__main__":
    main()
