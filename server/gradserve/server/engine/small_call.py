"""Small graphs with one row of leaf values, evaluated on Python floats from start to end.

For a 10-node graph, the NumPy engine's calls on tiny arrays and the conversions between
protobuf fields and arrays cost more than gRPC itself (the neuron took about 2x a bare gRPC
echo). When every op of a small plan has a scalar forward and a scalar backward, a call runs
here instead: values and gradients are Python floats in lists, and the reply is packed from
the lists.

This path is optimistic. Anything unusual makes ``SmallCalls.evaluate`` return None, and the
caller runs the general path, which reports the problem with its usual status and details,
or computes what this path does not (NaN and Inf passed through): an id out of range or a
field of the wrong length (the IndexError or ValueError of a list look-up or a strict zip),
a non-finite value or gradient, an input outside an op's domain, a scalar function raising
or returning something unusable, the caller gone or its deadline passed. So no validation is
repeated here.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from math import isfinite
from operator import itemgetter
from typing import Protocol

import numpy as np

from gradserve.ops import Op
from gradserve.server.engine.plan import Plan, Stretch

# The wire's Selection values (gradserve.v1.Selection; tests/test_protos.py checks that they
# match): the engine reads a request's fields but imports no protobuf.
SELECTION_UNSPECIFIED, SELECTION_ALL, SELECTION_LEAVES, SELECTION_NODES = range(4)


class _Graph(Protocol):
    leaf_values: Sequence[float]


class EvaluateRequestFields(Protocol):
    """The fields of an EvaluateRequest that this path reads."""

    graph: _Graph
    rows: int
    outputs: Sequence[int]
    seeds: Sequence[float]
    selection: int
    nodes: Sequence[int]


# Up to this many nodes a loop over floats beats the NumPy engine (measured in process, warm):
# it breaks even at about 200 nodes on a chain, where the engine runs on floats too, and at
# about 800 on MLPs, which the engine evaluates a layer per call; at 128 nodes it takes
# about 0.7x the engine's time on a chain and 0.5x on an MLP.
MAX_NODES = 128
MAX_PROGRAMS = 256  # programs kept per server, a few kB each

_Fetch = Callable[[list[float]], tuple[float, ...] | list[float]]
_Step = tuple[int, Callable[..., float], Callable[..., tuple[float, ...]], tuple[int, ...], _Fetch]


@dataclass(frozen=True)
class Program:
    """A plan as plain Python lists, for a loop over floats.

    Values and gradients live in lists indexed by slot: the leaves first (slots 0 to L - 1,
    in id order, as the request lists their values), then the op nodes in an order where
    every node's inputs come first. ``slots[node]`` is a node's slot; ``steps`` are (slot,
    scalar forward, scalar backward, input slots, fetch), where ``fetch(values)`` gives the
    inputs' values as a sequence. ``domains`` holds, per op with a domain and input count,
    its domain function and its nodes' input slots, one list per input position.
    """

    leaves: list[int]
    slots: list[int]
    steps: list[_Step]
    domains: list[tuple[Callable[..., np.ndarray], tuple[list[int], ...]]]


def program_of(plan: Plan) -> Program | None:
    """The plan's program, or None when the plan is not for this path (too large, with an op
    lacking a scalar forward or backward, or run in isolation workers)."""
    if not 0 < plan.node_count <= MAX_NODES or plan.source is not None:
        return None
    leaves = plan.leaves.tolist()
    slots = [0] * plan.node_count
    for slot, leaf in enumerate(leaves):
        slots[leaf] = slot
    steps: list[_Step] = []
    domains: dict[tuple[str, int], tuple[Callable, tuple[list[int], ...]]] = {}
    for op, node, inputs in _nodes_of(plan):
        if op.scalar is None or op.scalar_backward is None:
            return None
        slots[node] = len(leaves) + len(steps)
        inputs = tuple(slots[i] for i in inputs)
        steps.append((slots[node], op.scalar, op.scalar_backward, inputs, _fetch(inputs)))
        if op.domain is not None:
            _, positions = domains.setdefault(
                (op.name, len(inputs)), (op.domain, tuple([] for _ in inputs))
            )
            for position, slot in zip(positions, inputs, strict=True):
                position.append(slot)
    return Program(leaves, slots, steps, list(domains.values()))


def _fetch(inputs: tuple[int, ...]) -> _Fetch:
    """A function of the values list giving these inputs' values as a sequence: an
    itemgetter, which for a single index would give the value itself, hence the slice."""
    return itemgetter(*inputs) if len(inputs) > 1 else itemgetter(slice(inputs[0], inputs[0] + 1))


def _nodes_of(plan: Plan) -> Iterator[tuple[Op, int, list[int]]]:
    """Each op node with its op and input ids, step by step."""
    for step in plan.steps:
        if isinstance(step, Stretch):
            offsets, inputs = step.input_offsets.tolist(), step.inputs.tolist()
            for position, (op, node) in enumerate(zip(step.ops, step.nodes.tolist(), strict=True)):
                yield op, node, inputs[offsets[position] : offsets[position + 1]]
        else:
            for node, *inputs in zip(step.nodes.tolist(), *step.args.tolist(), strict=True):
                yield step.op, node, inputs


class SmallCalls:
    """The programs of one server's small plans, by plan digest, and the path that runs them.

    Programs are kept per server, not per process: servers in one process (as in the tests)
    may load different ops under the same name."""

    def __init__(self) -> None:
        self._programs: dict[bytes, Program | None] = {}

    def evaluate(
        self,
        plan: Plan,
        digest: bytes,
        request: EvaluateRequestFields,
        should_stop: Callable[[], bool],
    ) -> tuple[list[int], list[float], list[float]] | None:
        """The selected nodes' ids, values and gradients, or None: run the general path."""
        if plan.node_count > MAX_NODES or request.rows > 1:
            return None
        try:
            program = self._programs[digest]
        except KeyError:
            program = self._programs[digest] = program_of(plan)
            if len(self._programs) > MAX_PROGRAMS:  # the oldest out; a race only loses one
                self._programs.pop(next(iter(self._programs)), None)
        if program is None:
            return None
        try:
            return None if should_stop() else _evaluate(program, request)
        except Exception:  # see the module's docstring: the general path raises the error
            return None


def _evaluate(program: Program, request: EvaluateRequestFields):
    slots = program.slots
    v = list(request.graph.leaf_values)
    if len(v) != len(program.leaves):
        return None
    for _, forward, _, _, fetch in program.steps:
        v.append(forward(*fetch(v)))
    # A sum of floats is finite only if every term is (inf - inf is NaN); one that overflows
    # merely sends the call down the general path.
    if not isfinite(sum(v)) or (program.domains and not _inside_domains(program, v)):
        return None
    g = [0.0] * len(v)
    outputs, seeds = request.outputs, request.seeds
    if outputs or seeds:
        outputs = outputs or [len(slots) - 1]
        seeds = seeds or [1.0] * len(outputs)
        if len(seeds) != len(outputs):
            return None
        for output, seed in zip(outputs, seeds, strict=False):
            g[slots[output]] += seed
    else:
        g[slots[-1]] = 1.0  # the last node, seeded with 1
    for slot, _, backward, inputs, fetch in reversed(program.steps):
        local = backward(g[slot], v[slot], *fetch(v))
        if len(local) != len(inputs):  # cheaper than zip(strict=True), 0.2 us a node
            return None
        for i, d in zip(inputs, local, strict=False):
            g[i] += d
    if not isfinite(sum(g)):
        return None
    return _selected(program, request, v, g)


def _selected(program: Program, request: EvaluateRequestFields, v: list[float], g: list[float]):
    """The ids, values and gradients of the nodes whose results go back, as
    wire.selected_nodes picks them; None where that function raises."""
    selection, nodes = request.selection, request.nodes
    if selection == SELECTION_UNSPECIFIED:
        selection = SELECTION_NODES if nodes else SELECTION_ALL
    if selection == SELECTION_LEAVES and not nodes:
        count = len(program.leaves)
        return program.leaves, v[:count], g[:count]
    if selection == SELECTION_NODES:
        ids = list(nodes)
        slots = [program.slots[i] for i in ids]
    elif selection == SELECTION_ALL and not nodes:
        ids, slots = list(range(len(program.slots))), program.slots
    else:
        return None
    return ids, [v[i] for i in slots], [g[i] for i in slots]


def _inside_domains(program: Program, v: list[float]) -> bool:
    """Whether every op with a domain got inputs inside it: one call of the op's own domain
    function per op, on arrays shaped as the engine's (nodes, rows)."""
    with np.errstate(all="ignore"):
        for domain, positions in program.domains:
            xs = [np.array([v[i] for i in slots])[:, None] for slots in positions]
            if not np.all(domain(*xs)):
                return False
    return True
