"""Random graphs over every op, and their evaluation in plain Python floats (the fuzz oracle).

The reference below is written from calculus and ``math``, independently of the ops' code
(``ops_plugins/core/gradserve/ops/standard.py`` and the special plugin): a forward on floats
and each op's local derivatives. ``random_graph`` builds a graph whose every input lies
inside its op's domain and away from its kinks (relu and abs at 0, max and min on a tie),
where the derivative is not unique and two correct implementations may differ.
"""

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from graphs import GraphBuilder

BOUND = 100.0  # inputs of every op stay within +-BOUND, so that values stay finite
KINK = 1e-3  # least distance from a kink or a domain edge (relative inputs vary by 1e-4)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _logaddexp(a: float, b: float) -> float:
    top = max(a, b)
    return top + math.log(math.exp(a - top) + math.exp(b - top))


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _anything(x: float) -> bool:
    return True


def _away_from_zero(x: float) -> bool:
    return abs(x) >= KINK


@dataclass(frozen=True)
class RefOp:
    """arity (None: variadic), forward on floats, local derivatives d(y)/d(x_i) on the
    inputs, the domain of each input position (the last one repeats for variadic ops) and
    whether two inputs must differ (max and min: a tie is a kink)."""

    arity: int | None
    forward: Callable[..., float]
    derivative: Callable[..., tuple[float, ...]]
    domain: tuple[Callable[[float], bool], ...] = (_anything,)
    apart: bool = False

    def fits(self, position: int, x: float) -> bool:
        return abs(x) <= BOUND and self.domain[min(position, len(self.domain) - 1)](x)

    def inside(self, *xs: float) -> bool:
        if self.apart and abs(xs[0] - xs[1]) < KINK:
            return False
        return all(self.fits(position, x) for position, x in enumerate(xs))


def _pow(x: float, p: float) -> float:
    return math.exp(p * math.log(x))


STANDARD = {
    "add": RefOp(2, lambda a, b: a + b, lambda a, b: (1.0, 1.0)),
    "sub": RefOp(2, lambda a, b: a - b, lambda a, b: (1.0, -1.0)),
    "mul": RefOp(2, lambda a, b: a * b, lambda a, b: (b, a)),
    "div": RefOp(
        2,
        lambda a, b: a / b,
        lambda a, b: (1.0 / b, -a / (b * b)),
        (_anything, lambda b: abs(b) >= 0.5),
    ),
    "neg": RefOp(1, lambda x: -x, lambda x: (-1.0,)),
    "sum": RefOp(None, lambda *xs: math.fsum(xs), lambda *xs: (1.0,) * len(xs)),
    "pow": RefOp(
        2,
        _pow,
        lambda x, p: (p * _pow(x, p - 1.0), _pow(x, p) * math.log(x)),
        (lambda x: 0.1 <= x <= 10.0, lambda p: abs(p) <= 2.0),
    ),
    "exp": RefOp(1, math.exp, lambda x: (math.exp(x),), (lambda x: abs(x) <= 5.0,)),
    "log": RefOp(1, math.log, lambda x: (1.0 / x,), (lambda x: x >= 0.1,)),
    "sqrt": RefOp(1, math.sqrt, lambda x: (0.5 / math.sqrt(x),), (lambda x: x >= 0.1,)),
    "tanh": RefOp(1, math.tanh, lambda x: (1.0 / math.cosh(x) ** 2,)),
    "sigmoid": RefOp(1, _sigmoid, lambda x: (_sigmoid(x) * _sigmoid(-x),)),
    "softplus": RefOp(1, lambda x: math.log1p(math.exp(x)), lambda x: (_sigmoid(x),)),
    "relu": RefOp(
        1, lambda x: x if x > 0 else 0.0, lambda x: (1.0 if x > 0 else 0.0,), (_away_from_zero,)
    ),
    "abs": RefOp(
        1, lambda x: -x if x < 0 else x, lambda x: (1.0 if x > 0 else -1.0,), (_away_from_zero,)
    ),
    "sin": RefOp(1, math.sin, lambda x: (math.cos(x),)),
    "cos": RefOp(1, math.cos, lambda x: (-math.sin(x),)),
    "max": RefOp(
        2,
        lambda a, b: a if a > b else b,
        lambda a, b: (1.0, 0.0) if a > b else (0.0, 1.0),
        apart=True,
    ),
    "min": RefOp(
        2,
        lambda a, b: a if a < b else b,
        lambda a, b: (1.0, 0.0) if a < b else (0.0, 1.0),
        apart=True,
    ),
}

# The example third-party plugin's ops (ops_plugins/special), run in isolation workers.
SPECIAL = {
    "erf": RefOp(1, math.erf, lambda x: (2.0 / math.sqrt(math.pi) * math.exp(-x * x),)),
    "gelu": RefOp(
        1,
        lambda x: x * _normal_cdf(x),
        lambda x: (_normal_cdf(x) + x * math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi),),
    ),
    "logaddexp": RefOp(
        2,
        _logaddexp,
        lambda a, b: (math.exp(a - _logaddexp(a, b)), math.exp(b - _logaddexp(a, b))),
    ),
}


@dataclass
class RandomGraph:
    graph: GraphBuilder
    rows: list[list[float]]  # leaf values, one list per row
    inputs: list[tuple[int, ...]]  # each node's input ids (empty for leaves)


def _leaf_range(name: str, position: int) -> tuple[float, float]:
    """Leaf values that are always inside the op's domain at this input position."""
    if name in ("log", "sqrt") or (name == "pow" and position == 0):
        return 0.5, 5.0
    if name == "div" and position == 1:
        return 1.0, 3.0
    if name == "exp":
        return -3.0, 3.0
    return -2.0, 2.0


class _Builder:
    """A GraphBuilder that also keeps each node's first-row value and input ids."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.graph = GraphBuilder()
        self.values: list[float] = []
        self.inputs: list[tuple[int, ...]] = []

    def leaf(self, low: float, high: float) -> int:
        self.values.append(self.rng.uniform(low, high))
        self.inputs.append(())
        return self.graph.leaf(self.values[-1])

    def op(self, name: str, op: RefOp, chain: bool) -> None:
        arity = op.arity or self.rng.randint(1, 5)
        chosen: list[int] = []
        for position in range(arity):
            chosen.append(self._input(name, op, chosen, position, chain))
        xs = [self.values[i] for i in chosen]
        if op.inside(*xs):  # else a tie no fresh leaf could break (max of x and x): no node
            self.values.append(op.forward(*xs))
            self.inputs.append(tuple(chosen))
            self.graph.op(name, *chosen)

    def _input(self, name: str, op: RefOp, chosen: list[int], position: int, chain: bool) -> int:
        """The previous node (in a chain) or a random earlier one inside the domain, else a
        fresh leaf."""
        candidates = [self.rng.randrange(len(self.values)) for _ in range(5)]
        if chain and position == 0:
            candidates.insert(0, len(self.values) - 1)
        for candidate in candidates:
            x = self.values[candidate]
            tie = op.apart and position == 1 and abs(self.values[chosen[0]] - x) < KINK
            if op.fits(position, x) and not tie:
                return candidate
        return self.leaf(*_leaf_range(name, position))


def random_graph(
    rng: random.Random, ops: dict[str, RefOp], nodes: int, rows: int, chain_share: float
) -> RandomGraph:
    """A graph of about ``nodes`` nodes over ``ops`` (RefOps by name).

    Nodes are added in runs: a chain of 16 to 40 nodes (each reads the one before it, as the
    engine's scalar stretches do) with probability ``chain_share``, else nodes that read
    random earlier nodes (wide levels: the engine's groups). Where no earlier node fits an
    op's domain a fresh leaf is added for it. Rows after the first scale each leaf by
    1 +- 1e-4; ``reference`` tells when that took an input out of a domain.
    """
    b = _Builder(rng)
    for _ in range(rng.randint(1, 4)):
        b.leaf(-2.0, 2.0)
    names = sorted(ops)
    while len(b.values) < nodes:
        chain = rng.random() < chain_share
        for _ in range(rng.randint(16, 40) if chain else rng.randint(1, 30)):
            name = rng.choice(names)
            b.op(name, ops[name], chain)
    first = list(b.graph.leaf_values)
    leaf_rows = [first] + [
        [v * (1.0 + rng.uniform(-1e-4, 1e-4)) for v in first] for _ in range(rows - 1)
    ]
    return RandomGraph(b.graph, leaf_rows, b.inputs)


def reference(
    rg: RandomGraph, ops: dict, row: list[float], outputs: list[int], seeds: list[float]
) -> tuple[list[float], list[float], bool]:
    """Values and gradients of sum(seeds * outputs) in id order with Python floats, and
    whether every op's inputs were inside its domain and away from its kinks."""
    g = rg.graph
    values: list[float] = []
    leaves = iter(row)
    inside = True
    for node, op_index in enumerate(g.node_ops):
        if op_index == 0:
            values.append(next(leaves))
            continue
        op = ops[g.op_names[op_index - 1]]
        xs = [values[i] for i in rg.inputs[node]]
        inside = inside and op.inside(*xs)
        values.append(op.forward(*xs) if inside else math.nan)
    grads = [0.0] * len(values)
    for output, seed in zip(outputs, seeds, strict=True):
        grads[output] += seed
    if not inside:
        return values, grads, False
    for node in range(len(values) - 1, -1, -1):
        op_index = g.node_ops[node]
        if op_index and grads[node]:
            op = ops[g.op_names[op_index - 1]]
            ids = rg.inputs[node]
            for i, local in zip(ids, op.derivative(*(values[i] for i in ids)), strict=True):
                grads[i] += grads[node] * local
    return values, grads, True
