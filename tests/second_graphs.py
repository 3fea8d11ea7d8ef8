"""Random graphs over every op for second-order tests: shared nodes, repeated inputs and
variadic sums, with every input well inside its op's domain and away from its kinks, so
that finite differences are a trustworthy oracle."""

from pathlib import Path

import numpy as np
from graphs import GraphBuilder

SPECIAL = Path(__file__).resolve().parents[1] / "ops_plugins" / "special"
MARGIN = 0.1  # how far inputs stay from kinks, ties and domain edges
BOUND = 30.0  # values stay within +-BOUND, so finite differences keep their accuracy


def _fits(name: str, xs: list[float], y: float) -> bool:
    """Whether ``name`` at ``xs`` (value ``y``) is smooth, inside its domain and bounded."""
    if not np.isfinite(y) or abs(y) > BOUND:
        return False
    if name in ("relu", "abs"):
        return abs(xs[0]) > MARGIN
    if name in ("max", "min"):
        return abs(xs[0] - xs[1]) > MARGIN
    if name in ("log", "sqrt"):
        return xs[0] > MARGIN
    if name == "div":
        return abs(xs[1]) > 0.5
    if name == "pow":
        return xs[0] > 0.2 and abs(xs[1]) < 3.0
    if name == "exp":
        return xs[0] < 3.0
    return True


def random_graph(
    ops: dict, rng: np.random.Generator, n_leaves: int = 4, n_ops: int = 30
) -> GraphBuilder:
    """A random graph over ``ops`` (name -> Op) whose last node reads many earlier ones.

    Each op node draws its op, then up to 50 candidate input tuples from earlier nodes
    (recent ones more often, a node repeated in a tuple one time in five), and keeps the
    first where the op is smooth; it is computed here, one node at a time, to check that.
    """
    g = GraphBuilder()
    values = [float(v) for v in rng.uniform(-1.5, 1.5, n_leaves)]
    for v in values:
        g.leaf(v)
    names = sorted(ops)
    while len(g.node_ops) < n_leaves + n_ops:
        name = names[rng.integers(len(names))]
        op = ops[name]
        arity = op.arity or int(rng.integers(1, 5))
        for _ in range(50):
            count = len(values)
            picks = [int(count - 1 - min(rng.geometric(0.3) - 1, count - 1)) for _ in range(arity)]
            if arity > 1 and rng.random() < 0.2:
                picks[1] = picks[0]  # a repeated input, as x*x
            xs = [values[i] for i in picks]
            with np.errstate(all="ignore"):
                y = float(op.forward(*[np.array([x]) for x in xs])[0])
            if _fits(name, xs, y):
                g.op(name, *picks)
                values.append(y)
                break
    # A final sum reads a spread of earlier nodes (shared ones included) and some leaves.
    count = len(values)
    reads = sorted(set(rng.integers(n_leaves, count, size=6).tolist()) | {count - 1, 0})
    g.op("sum", *reads)
    return g
