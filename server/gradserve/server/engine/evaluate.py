"""Run a Plan: forward over its steps, then reverse-mode autodiff back over them.

Each Group is one vectorized call of its op; a Stretch (a chain) runs node by node. Gradients
are scatter-added (``np.add.at``, or scatter.py for several rows) so that a node read by
several nodes, or twice by one node as in ``x*x``, receives every contribution. Nothing here
recurses, so graph depth is limited only by memory.
"""

from collections.abc import Callable

import numpy as np

from gradserve.server.engine import finite, op_calls, scalar_stretch
from gradserve.server.engine.errors import Cancelled, GraphError, OpFailure
from gradserve.server.engine.plan import Group, Plan, Stretch, never_stop


def evaluate(
    plan: Plan,
    leaf_values: np.ndarray,
    outputs: np.ndarray,
    seeds: np.ndarray,
    should_stop: Callable[[], bool] = never_stop,
    allow_non_finite: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return every node's value and its gradient of ``sum(seeds * outputs)``.

    ``leaf_values`` is one row (shape ``(L,)``, one value per leaf) or several (shape
    ``(B, L)``); the results are shaped ``(n,)`` or ``(n, B)`` to match. Rows are evaluated
    together: every op call sees arrays of shape ``(group size, B)``. ``should_stop`` is
    polled between groups; when it returns True the evaluation is abandoned (Cancelled).
    Unless ``allow_non_finite``, a NaN or Inf value or gradient is a GraphError naming the
    node where it starts.
    """
    with np.errstate(all="ignore"):  # inf and NaN follow IEEE rules, silently
        return _evaluate(plan, leaf_values, outputs, seeds, should_stop, allow_non_finite)


def _evaluate(plan, leaf_values, outputs, seeds, should_stop, allow_non_finite):
    leaf_values = np.asarray(leaf_values, dtype=np.float64)
    single_row = leaf_values.ndim == 1
    rows = np.atleast_2d(leaf_values)
    _check_leaf_count(plan, rows.shape[1])
    values = np.empty((plan.node_count, rows.shape[0]), dtype=np.float64)
    values[plan.leaves] = rows.T
    for step in plan.steps:
        if should_stop():
            raise Cancelled()
        if isinstance(step, Stretch):
            _forward_stretch(step, values, should_stop)
        else:
            values[step.nodes] = op_calls.forward(step, list(values.take(step.args, axis=0)))
    if not allow_non_finite:
        finite.check_values(plan, values)

    grads = np.zeros(values.shape)  # not zeros_like: 10x its cost on a small graph
    np.add.at(grads, outputs, np.asarray(seeds, dtype=np.float64)[:, None])
    for step in reversed(plan.steps):
        if should_stop():
            raise Cancelled()
        if isinstance(step, Stretch):
            _backward_stretch(step, values, grads, should_stop)
            continue
        g, y = grads.take(step.nodes, axis=0), values.take(step.nodes, axis=0)
        local = op_calls.backward(step, g, y, values, should_stop)
        if should_stop():  # a variadic op over a million inputs takes a while
            raise Cancelled()
        # Every input position's gradients at once, in args' order (position by position).
        contributions = np.concatenate(local) if len(local) > 1 else local[0]
        del local
        if values.shape[1] == 1:  # np.add.at is quick on one column and needs no sort,
            # given as 1-D: on an (n, 1) array it took 3-5x longer (180,000 entries: 2.5 ms
            # against 0.5), adding in the same order
            np.add.at(grads[:, 0], step.args.ravel(), contributions[:, 0])
        else:
            step.scatter.add_into(grads, contributions)
        del contributions
    if not allow_non_finite:
        finite.check_grads(grads)
    return (values[:, 0], grads[:, 0]) if single_row else (values, grads)


def _check_leaf_count(plan: Plan, given: int) -> None:
    expected = len(plan.leaves)
    if given != expected:
        missing = given < expected
        raise GraphError(
            f"the graph has {expected} leaves but leaf_values has {given} entries "
            "(one per leaf, in id order, per row)"
            + (f"; leaf {plan.describe(int(plan.leaves[given]))} has no value" if missing else ""),
            field="graph.leaf_values",
        )


def _forward_stretch(stretch: Stretch, values: np.ndarray, should_stop: Callable) -> None:
    """Run a chain node by node, on floats when it can; then check the op domains, part by
    part."""
    if stretch.scalars is not None and values.shape[1] == 1:
        scalar_stretch.forward(stretch, values, should_stop)
    else:
        _forward_stretch_arrays(stretch, values, should_stop)
    _check_stretch_domains(stretch, values)


def _forward_stretch_arrays(stretch: Stretch, values: np.ndarray, should_stop: Callable) -> None:
    rows = values.shape[1:]
    nodes, offsets, inputs = stretch.lists()
    for position, (op, node) in enumerate(zip(stretch.ops, nodes, strict=True)):
        if should_stop():  # every node: a slow plugin op may take long for each
            raise Cancelled()
        start, end = offsets[position], offsets[position + 1]
        try:
            # One and two inputs spelled out: no list per node (14-25% off a chain's forward).
            if end - start == 1:
                y = op.forward(values[inputs[start]])
            elif end - start == 2:
                y = op.forward(values[inputs[start]], values[inputs[start + 1]])
            else:
                y = op.forward(*[values[i] for i in inputs[start:end]])
        except MemoryError:  # the server's, not the plugin's: RESOURCE_EXHAUSTED
            raise
        except Exception as exc:
            raise OpFailure(op.name, node, "failed in forward") from exc
        if type(y) is not np.ndarray or y.dtype != np.float64 or y.shape != rows:
            single = Group(op, stretch.nodes[position : position + 1], None)
            y = op_calls.checked(single, y, "forward", rows)
        values[node] = y


def _check_stretch_domains(stretch: Stretch, values: np.ndarray) -> None:
    """Raise the GraphError of the first node, in forward order, outside its op's domain."""
    first_outside = None
    for part, positions in zip(stretch.parts, stretch.part_positions, strict=True):
        if part.op.domain is None:
            continue
        try:
            op_calls.forward(part, [values[a] for a in part.args])  # raises GraphError when outside
        except GraphError as exc:
            position = int(positions[np.flatnonzero(part.nodes == exc.node)[0]])
            if first_outside is None or position < first_outside[0]:
                first_outside = (position, exc)
    if first_outside is not None:
        raise first_outside[1]


_SLICE_NODE_ROWS = 1 << 20  # node-rows of a chain's local derivatives taken in one op call


def _backward_stretch(
    stretch: Stretch, values: np.ndarray, grads: np.ndarray, should_stop: Callable
) -> None:
    """Local derivatives of the whole chain in one call per part and slice (backward with
    an upstream gradient of 1: an op's backward is linear in it), then propagation node by
    node. A part is taken in slices of about a million node-rows, with a stop check
    between them: a long chain over many rows takes seconds."""
    rows = values.shape[1]
    local = np.empty((len(stretch.inputs), rows))
    step = max(1, _SLICE_NODE_ROWS // rows)
    for part, positions in zip(stretch.parts, stretch.part_positions, strict=True):
        for start in range(0, len(part.nodes), step):
            if should_stop():
                raise Cancelled()
            piece = slice(start, start + step)
            sliced = Group(part.op, part.nodes[piece], part.args[:, piece])
            y = values[sliced.nodes]
            derivatives = op_calls.backward(sliced, np.ones_like(y), y, values)
            local[stretch.edges(positions[piece], len(sliced.args))] = np.stack(derivatives)
    if should_stop():
        raise Cancelled()
    if values.shape[1] == 1:
        scalar_stretch.backward(stretch, local[:, 0], grads, should_stop)
        return
    nodes, offsets, inputs = stretch.lists()
    for position in range(len(nodes) - 1, -1, -1):
        if position % scalar_stretch.POLL_EVERY == 0 and should_stop():
            raise Cancelled()
        upstream = grads[nodes[position]]
        for edge in range(offsets[position], offsets[position + 1]):
            grads[inputs[edge]] += upstream * local[edge]
