"""Small graphs with one row of leaf values, evaluated on Python floats from start to end.

For a 10-node graph, the NumPy engine's calls on tiny arrays and the conversions between
protobuf fields and arrays cost more than gRPC itself (the neuron took about 2x a bare gRPC
echo). When every op of a small plan has a scalar forward and a scalar backward, a call runs
here instead: values and gradients are Python floats in lists, and the reply is packed from
the lists.

This path is optimistic. Anything unusual makes ``evaluate`` return None, and the
caller runs the general path, which reports the problem with its usual status and details,
or computes what this path does not (NaN and Inf passed through): an id out of range or a
field of the wrong length (the IndexError or ValueError of a list look-up or a strict zip),
a non-finite value or gradient, an input outside an op's domain, a scalar function raising
or returning something unusable, the caller gone or its deadline passed. So no validation is
repeated here.
"""

import itertools
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from math import isfinite
from operator import itemgetter
from typing import Protocol

import numpy as np

from gradserve.ops import Op
from gradserve.ops.formulas import Code, emit_condition
from gradserve.server.engine.plan import Plan, Stretch
from gradserve.server.engine.requests import (
    SELECTION_ALL,
    SELECTION_LEAVES,
    SELECTION_NODES,
    outputs_or_default,
    seeds_or_default,
    selection_of,
)


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


# A plan of up to LOOP_NODES nodes runs on floats from its first call, in a loop over its
# steps (it breaks even with the NumPy engine at about 200 nodes on a chain, 400 on an MLP).
# A structure sent again (a training loop's step) gets a program of straight-line code,
# compiled once, up to MAX_NODES. Measured in process, warm, on a 2-core machine: the
# compiled program takes 0.16-0.26 us a node, the engine 0.7 us at 200 nodes, 0.6 at 400,
# 0.35 at 1,000 and 0.16 at 3,000 on an MLP (it evaluates a layer per call), 0.2 on a
# 3,000-node chain; compiling costs 13-35 us a node, once, on the structure's second call.
# Programs are kept with their plan (``Plan.kept``), so the plan cache counts and evicts
# them with it.
LOOP_NODES = 128
MAX_NODES = 2048
UNPACKED = 8  # gradients unpacked into locals of their own; more are indexed
LOOPED, COMPILED = "looped float program", "compiled float program"  # keys in Plan.kept

_lock = threading.Lock()  # for a plan's kept programs, which concurrent calls may make
# The names of a compiled program's locals (node 7's value ``v7``, its gradient ``g7``),
# interned once per process (about 250 KB): a program's code refers to these rather than
# to names of its own, so that compiling one does not grow the interpreter's table of
# interned names, which no plan counts (after another such compile, a 2,000-node
# program's left a 1.9 MB block, tracemalloc in tests/test_plan_cache.py).
_VALUE_NAMES = [sys.intern(f"v{node}") for node in range(MAX_NODES)]
_GRAD_NAMES = [sys.intern(f"g{node}") for node in range(MAX_NODES)]


@dataclass(frozen=True)
class Program:
    """A plan as two functions of Python floats, on lists in node order.

    ``forward(leaf_values)`` takes the leaves' values (in id order, as the request lists
    them) and gives every node's value, a list indexed by node id (None, from a compiled
    program, for inputs outside a domain it checks inline); ``backward(values, grads)``
    takes those values and every node's seeded gradient, in the same order, and gives
    every node's gradient: a reply of every node sends the lists as they are (a 400-node
    step's reordering took 8 us). ``domains`` holds, per op with a domain and input count
    that the program does not check inline, its domain function, a getter of its nodes'
    input values (every node's first input, then every node's second, ...) and the shape
    (inputs, nodes, 1) they take as the domain's arrays. ``of_leaves`` gives a
    node-ordered list's entries of the leaves, as a list. ``compiled``: straight-line code
    rather than a loop over steps.
    """

    leaves: list[int]
    forward: Callable[[list[float]], list[float] | None]
    backward: Callable[[list[float], list[float]], list[float]]
    domains: list[tuple[Callable[..., np.ndarray], Callable, tuple[int, int, int]]]
    of_leaves: Callable[[list[float]], list[float]]
    compiled: bool
    code_bytes: int  # what its functions hold beyond the lists above

    def nbytes(self) -> int:
        """The memory the program holds: its leaves' list (the ids above 256 are int
        objects of their own) and functions. Checked against tracemalloc in
        tests/test_plan_cache.py."""
        leaves = sys.getsizeof(self.leaves) + _INT_BYTES * sum(leaf > 256 for leaf in self.leaves)
        return leaves + self.code_bytes + _GETTER_BYTES + _PROGRAM_BYTES


_Step = tuple[int, Op, list[int]]  # an op node, its op and its inputs


def program_of(plan: Plan, compiled: bool = False) -> Program | None:
    """The plan's program, or None when the plan is not for this path (too large, with an op
    lacking a scalar forward or backward, or run in isolation workers)."""
    limit = MAX_NODES if compiled else LOOP_NODES
    if not 0 < plan.node_count <= limit or plan.isolated:
        return None
    leaves = plan.leaves.tolist()
    steps: list[_Step] = []
    domains: dict[tuple[str, int], tuple[Callable, tuple[list[int], ...]]] = {}
    folded: dict[tuple[str, int], bool] = {}  # per op and input count: its domain inline
    for op, node, inputs in _nodes_of(plan):
        if op.scalar is None or op.scalar_backward is None:
            return None
        steps.append((node, op, inputs))
        if op.domain is not None and not (compiled and _folds(op, len(inputs), folded)):
            _, positions = domains.setdefault(
                (op.name, len(inputs)), (op.domain, tuple([] for _ in inputs))
            )
            for position, node_input in zip(positions, inputs, strict=True):
                position.append(node_input)
    if compiled:
        forward, backward, code_bytes = _compiled(steps, leaves, plan.node_count, folded)
    else:
        forward, backward, code_bytes = _looped(steps, leaves, plan.node_count)
    domain_list = [
        (domain, itemgetter(*itertools.chain(*positions)), (len(positions), len(positions[0]), 1))
        for domain, positions in domains.values()
    ]
    code_bytes += sum(_DOMAIN_BYTES + 8 * shape[0] * shape[1] for *_, shape in domain_list)
    code_bytes += 8 * len(leaves)  # of_leaves' tuple
    return Program(leaves, forward, backward, domain_list, _entries(leaves), compiled, code_bytes)


def _entries(indices: list[int]) -> Callable[[list[float]], list[float]]:
    """A function giving a list's entries at ``indices``, as a list: an itemgetter, 3x
    quicker than a comprehension (which a single index needs: its itemgetter gives the
    entry itself, and none gives nothing)."""
    if len(indices) <= 1:
        return lambda v: [v[i] for i in indices]
    getter = itemgetter(*indices)
    return lambda v: list(getter(v))


def _looped(steps: list[_Step], leaves: list[int], node_count: int):
    """forward and backward as loops over the steps."""
    table = [
        (node, op.scalar, op.scalar_backward, inputs, _fetch(inputs)) for node, op, inputs in steps
    ]

    def forward(leaf_values: list[float]) -> list[float]:
        v = [0.0] * node_count
        for leaf, value in zip(leaves, leaf_values, strict=True):
            v[leaf] = value
        for node, scalar, _, _, fetch in table:
            v[node] = scalar(*fetch(v))
        return v

    def backward(v: list[float], g: list[float]) -> list[float]:
        for node, _, scalar_backward, inputs, fetch in reversed(table):
            local = scalar_backward(g[node], v[node], *fetch(v))
            if len(local) != len(inputs):  # cheaper than zip(strict=True), 0.2 us a node
                raise ValueError("a scalar backward gave the wrong number of gradients")
            for i, d in zip(inputs, local, strict=False):
                g[i] += d
        return g

    # Per step: its tuple, its inputs' list, their itemgetter and the tuple that holds them.
    held = sum(_STEP_BYTES + 24 * len(inputs) for _, _, inputs in steps)
    return forward, backward, held + sys.getsizeof(table)


def _fetch(inputs: list[int]):
    """A function of the values list giving these inputs' values as a sequence: an
    itemgetter, which for a single index would give the value itself, hence the slice."""
    return itemgetter(*inputs) if len(inputs) > 1 else itemgetter(slice(inputs[0], inputs[0] + 1))


def _folds(op: Op, inputs: int, folded: dict[tuple[str, int], bool]) -> bool:
    """Whether the compiled program checks the op's domain inline, as float code
    (``formulas.emit_condition``): a domain written with operators alone. On 4-element
    arrays, NumPy's calls took 9 us of the README model's 398-node step."""
    key = (op.name, inputs)
    if key not in folded:
        names = [f"x{i}" for i in range(inputs)]
        folded[key] = emit_condition(op.domain, names, Code(array=False)) is not None
    return folded[key]


def _compiled(
    steps: list[_Step], leaves: list[int], node_count: int, folded: dict[tuple[str, int], bool]
):
    """forward and backward as straight-line code: one line per node each way, no loop,
    each node's value and gradient a local variable (``v7``, ``g7``), the lists unpacked
    into them and built from them in node order. An op of fixed arity written as formulas
    is inline (its float code, rendered by ``Op.formulas``); any other op's scalar
    functions are called. A domain in ``folded`` is checked before its node's value, and
    forward gives None for inputs outside it."""
    values, grads = _VALUE_NAMES[:node_count], _GRAD_NAMES[:node_count]
    forward_lines = [f" [{', '.join(values[leaf] for leaf in leaves)}] = leaf_values"]
    backward_lines = []
    code = Code(array=False)
    for node, op, inputs in steps:
        args = [values[i] for i in inputs]
        if op.domain is not None and folded.get((op.name, len(inputs))):
            statements, inside = emit_condition(op.domain, args, code)
            forward_lines.append(" " + "; ".join([*statements, f"if not {inside}: return None"]))
        if op.formulas is not None and op.arity is not None:
            statements, value = op.formulas.emit_forward(args, code)
            forward_lines.append(" " + "; ".join([*statements, f"v{node} = {value}"]))
            statements, local = op.formulas.emit_backward(f"g{node}", f"v{node}", args, code)
            added = [f"g{i} += {d}" for i, d in zip(inputs, local, strict=True)]
            backward_lines.append(" " + "; ".join([*statements, *added]))
            continue
        # Unpacking fails (a ValueError: the general path) when the backward returns the
        # wrong number of gradients; a variadic op's many gradients are indexed instead,
        # after the same check, so that a program names at most UNPACKED locals of them.
        f, b = f"f{id(op.scalar)}", f"b{id(op.scalar_backward)}"
        code.namespace[f], code.namespace[b] = op.scalar, op.scalar_backward
        forward_lines.append(f" v{node} = {f}({', '.join(args)})")
        call = f"{b}(g{node}, v{node}, {', '.join(args)})"
        if len(inputs) <= UNPACKED:
            local = [f"d{k}" for k in range(len(inputs))]
            first = f" [{', '.join(local)}] = {call}"
        else:
            local = [f"d[{k}]" for k in range(len(inputs))]
            first = f" d = {call}; _check_count(d, {len(inputs)})"
            code.namespace["_check_count"] = _check_count
        added = [f"g{i} += {d}" for i, d in zip(inputs, local, strict=True)]
        backward_lines.append("; ".join([first, *added]))
    every_value, every_grad = ", ".join(values), ", ".join(grads)
    source = "\n".join(
        [
            "def forward(leaf_values):",
            *forward_lines,
            f" return [{every_value}]",
            "def backward(v, g):",
            f" [{every_value}] = v",
            f" [{every_grad}] = g",
            *reversed(backward_lines),
            f" return [{every_grad}]",
        ]
    )
    namespace = dict(code.namespace)
    exec(compile(source, f"<program of {len(steps)} steps>", "exec"), namespace)
    forward, backward = namespace["forward"], namespace["backward"]
    held = sys.getsizeof(namespace) + _code_bytes(forward.__code__) + _code_bytes(backward.__code__)
    return forward, backward, held


def _check_count(gradients, inputs: int) -> None:
    if len(gradients) != inputs:
        raise ValueError("a scalar backward gave the wrong number of gradients")


def _code_bytes(code) -> int:
    """What a code object holds: its bytecode, constants, names (with their strings) and
    line tables, and a quarter more for what the interpreter keeps beside them."""
    parts = (code.co_code, code.co_consts, code.co_names, code.co_varnames, code.co_linetable)
    names = sum(map(sys.getsizeof, code.co_names + code.co_varnames))
    return (sys.getsizeof(code) + sum(map(sys.getsizeof, parts)) + names) * 5 // 4 + _FUNCTION_BYTES


# Measured with tracemalloc on CPython 3.11: an int object above 256 takes 32 bytes, a
# looped program's step about 300 plus 16 to 24 per input, a function object about 150. A
# step counted up to 31 bytes more in a process whose free lists the full suite had used
# (a chain of 10 counted 5,832 against 5,520 in CI at 1b4fdcb, in three counts of three):
# 420 covers that with room.
_INT_BYTES = 32
_STEP_BYTES = 420
_FUNCTION_BYTES = 256
_DOMAIN_BYTES = 256
_PROGRAM_BYTES = 1024
_GETTER_BYTES = 400  # an itemgetter, its lambda and their cells, besides its tuple's items


def _nodes_of(plan: Plan) -> Iterator[tuple[Op, int, list[int]]]:
    """Each op node with its op and input ids, step by step."""
    for step in plan.steps:
        if isinstance(step, Stretch):
            nodes, offsets, inputs = step.lists()
            for position, (op, node) in enumerate(zip(step.ops, nodes, strict=True)):
                yield op, node, inputs[offsets[position] : offsets[position + 1]]
        else:
            for node, *inputs in zip(step.nodes.tolist(), *step.args.tolist(), strict=True):
                yield step.op, node, inputs


class PlanCache(Protocol):
    def remeasure(self, digest: bytes, plan: Plan) -> None: ...


def evaluate(
    plan: Plan,
    request: EvaluateRequestFields,
    should_stop: Callable[[], bool],
    plans: PlanCache,
    digest: bytes,
) -> tuple[Sequence[int], list[float], list[float], bool, bool] | None:
    """The selected nodes' ids, values and gradients, whether they are every node's in
    id order, and whether the results are by node rather than by selected node
    (``_selected``), or None: run the general path. When
    the plan keeps a new program, ``plans`` (which hold it under ``digest``) count it."""
    if plan.node_count > MAX_NODES or request.rows > 1:
        return None
    program = plan.kept.get(COMPILED) or _program(plan, plans, digest)
    if program is None:
        return None
    try:
        return None if should_stop() else _evaluate(program, request)
    except Exception:  # see the module's docstring: the general path raises the error
        return None


def quick(plan: Plan) -> bool:
    """Whether ``evaluate`` takes at most about a millisecond here: a small plan, or one
    whose program is compiled already (compiling one takes up to tens of milliseconds),
    or one too large for this path, which it declines at once."""
    if plan.node_count <= LOOP_NODES or plan.node_count > MAX_NODES:
        return True
    return COMPILED in plan.kept


def _program(plan: Plan, plans: PlanCache, digest: bytes) -> Program | None:
    """The plan's program: looped on its first call (None when the plan is too large for
    that), compiled on its second (None when it cannot be), then that one."""
    kept = plan.kept
    if COMPILED in kept:
        return kept[COMPILED]
    if LOOPED in kept:  # the second call: compile, outside the lock
        name, program = COMPILED, program_of(plan, compiled=True)
    else:
        name, program = LOOPED, program_of(plan)
    with _lock:
        if name in kept:  # another call made it meanwhile
            return kept[name]
        kept[name] = program
        if name == COMPILED:
            kept.pop(LOOPED, None)  # never run again
    plans.remeasure(digest, plan)
    return program


def _evaluate(program: Program, request: EvaluateRequestFields):
    leaf_values = request.graph.leaf_values[:]
    if len(leaf_values) != len(program.leaves):
        return None
    v = program.forward(leaf_values)
    if v is None:  # an input outside a domain that the program checks
        return None
    # A sum of floats is finite only if every term is (inf - inf is NaN); one that overflows
    # merely sends the call down the general path.
    if not isfinite(sum(v)) or (program.domains and not _inside_domains(program, v)):
        return None
    g = [0.0] * len(v)
    outputs = outputs_or_default(request.outputs, len(v))
    seeds = seeds_or_default(request.seeds, len(outputs))
    if len(seeds) != len(outputs):
        return None
    for output, seed in zip(outputs, seeds, strict=False):
        g[output] += seed
    g = program.backward(v, g)
    if not isfinite(sum(g)):
        return None
    return _selected(program, request, leaf_values, v, g)


def _selected(
    program: Program,
    request: EvaluateRequestFields,
    leaf_values: list[float],
    v: list[float],
    g: list[float],
):
    """The ids, values and gradients of the nodes whose results go back, as
    wire.selected_nodes picks them, and whether they are every node's, or, for chosen
    nodes, the request's ids with every node's results (``Answer.by_node``); None where
    that function raises. The leaves' values are the request's own."""
    nodes = request.nodes
    selection = selection_of(request.selection, nodes)
    if selection == SELECTION_LEAVES and not nodes:
        return program.leaves, leaf_values, program.of_leaves(g), False, False
    if selection == SELECTION_NODES:
        # The request's ids, with every node's results: a selection may repeat a node a
        # million times, and its results are gathered a part at a time (Answer.part). The
        # ids are copied out of the request, whose message the call lets go of: a few as
        # a list, many as 4-byte ids (a list of a million ids above 256 takes 40 MB).
        if len(nodes) <= MAX_NODES:
            ids = nodes[:]
            largest = max(ids, default=-1)
        else:
            ids = np.array(nodes, dtype=np.uint32)
            largest = ids.max()
        if largest >= len(v):
            return None
        return ids, v, g, False, True
    if selection == SELECTION_ALL and not nodes:
        return range(len(v)), v, g, True, False
    return None


def _inside_domains(program: Program, v: list[float]) -> bool:
    """Whether every op with a domain got inputs inside it: one call of the op's own domain
    function per op, on arrays shaped as the engine's (nodes, rows), all made as one. A
    domain that gives something other than an array raises here: the general path."""
    with np.errstate(all="ignore"):
        for domain, inputs, shape in program.domains:
            if not domain(*np.array(inputs(v)).reshape(shape)).all():
                return False
    return True
