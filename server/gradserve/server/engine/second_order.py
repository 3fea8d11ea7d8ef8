"""Tangents: Jacobian-vector products forward and Hessian-vector products by
forward-over-reverse, on top of a first-order evaluation.

Given a tangent ``t`` for every leaf (a direction), every node gets

- ``value_tangent``: the directional derivative of its value, propagated forward:
  ``t[node] = sum_j d_j t[x_j]``, with ``d_j`` the op's local derivatives, which are its
  backward with an upstream gradient of 1 (a backward is linear in that gradient);
- ``grad_tangent``: the directional derivative of its gradient, propagated backward by
  differentiating each reverse step ``grad[x_j] += d_j grad[node]`` along ``t``:
  ``grad_tangent[x_j] += d_j grad_tangent[node] + grad[node] sum_k H_jk t[x_k]``, with
  ``H`` the op's second derivatives (``Op.second``). For a leaf this is the Hessian of
  ``sum(seeds * outputs)`` times the leaf tangents.

Values and gradients come from ``evaluate`` unchanged, so they equal a first-order call's.
Like it, the tangent passes make one vectorized op call per group and scatter-add into
inputs, so shared nodes and repeated inputs (``x*x``) get every contribution; a Stretch
(chain) gets its local derivatives from one call per part and propagates node by node on
arrays. Nothing recurses, and ``should_stop`` is polled between steps.
"""

from collections.abc import Callable, Sequence

import numpy as np

from gradserve.server.engine import op_calls
from gradserve.server.engine.errors import Cancelled, GraphError, OpFailure
from gradserve.server.engine.evaluate import evaluate
from gradserve.server.engine.plan import Group, Plan, Stretch, never_stop


def evaluate_with_tangents(
    plan: Plan,
    leaf_values: np.ndarray,
    leaf_tangents: np.ndarray,
    outputs: np.ndarray,
    seeds: np.ndarray,
    should_stop: Callable[[], bool] = never_stop,
    allow_non_finite: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return every node's value, gradient, value tangent and gradient tangent.

    ``leaf_tangents`` has the shape of ``leaf_values``: ``(L,)`` for one row or ``(B, L)``;
    results are shaped ``(n,)`` or ``(n, B)`` to match. Every op of the plan must have
    second derivatives, otherwise GraphError names the op and its first node. Unless
    ``allow_non_finite``, a NaN or Inf tangent is a GraphError naming the node.
    """
    require_second_order(plan)
    leaf_values = np.asarray(leaf_values, dtype=np.float64)
    leaf_tangents = np.asarray(leaf_tangents, dtype=np.float64)
    if leaf_tangents.shape != leaf_values.shape:
        raise GraphError(
            f"leaf_tangents has {leaf_tangents.size} entries but leaf_values has "
            f"{leaf_values.size}: give one tangent per leaf value (per row)",
            field="leaf_tangents",
        )
    values, grads = evaluate(plan, leaf_values, outputs, seeds, should_stop, allow_non_finite)
    single_row = leaf_values.ndim == 1
    if single_row:
        values, grads = values[:, None], grads[:, None]
    with np.errstate(all="ignore"):  # inf and NaN follow IEEE rules, silently
        tangents = np.zeros(values.shape)
        tangents[plan.leaves] = np.atleast_2d(leaf_tangents).T
        locals_ = _forward_tangents(plan, values, tangents, should_stop)
        if not allow_non_finite:
            _check_finite(plan, tangents, "tangent of the value")
        grad_tangents = np.zeros(values.shape)
        _backward_tangents(plan, values, grads, tangents, grad_tangents, locals_, should_stop)
    if not allow_non_finite:
        _check_finite(plan, grad_tangents, "tangent of the gradient")
    if single_row:
        return values[:, 0], grads[:, 0], tangents[:, 0], grad_tangents[:, 0]
    return values, grads, tangents, grad_tangents


def require_second_order(plan: Plan) -> None:
    """Raise GraphError naming the first op (and its first node) without ``second``."""
    missing = [
        (int(group.nodes.min()), group.op.name)
        for group in _groups(plan)
        if group.op.second is None
    ]
    if missing:
        node, name = min(missing)
        raise GraphError(
            f"op {name!r} has no second derivatives, so leaf_tangents (Hessian-vector "
            "products) cannot go through it; ListOps says which ops have them "
            "(second_order)",
            node=node,
            field="leaf_tangents",
        )


def _groups(plan: Plan):
    for step in plan.steps:
        yield from step.parts if isinstance(step, Stretch) else (step,)


def _local_derivatives(group: Group, values: np.ndarray, should_stop=never_stop) -> list:
    """The group's local derivatives, one array per input position (shape (m, rows))."""
    y = values.take(group.nodes, axis=0)
    return op_calls.backward(group, np.ones(y.shape), y, values, should_stop)


def _forward_tangents(plan, values, tangents, should_stop) -> list:
    """Fill ``tangents`` of the op nodes, step by step; return each step's local
    derivatives (an array per input position of a Group, an array per edge for a
    Stretch) for the reverse pass."""
    locals_ = []
    for step in plan.steps:
        if should_stop():
            raise Cancelled()
        if isinstance(step, Stretch):
            local = _stretch_locals(step, values, _local_derivatives)
            _forward_stretch(step, local, tangents, should_stop)
            locals_.append(local)
            continue
        derivatives = _local_derivatives(step, values, should_stop)
        tangents[step.nodes] = _directional(step, derivatives, tangents, should_stop)
        locals_.append(derivatives)
    return locals_


# A group's input positions whose products are summed at once: at most _POLL_INPUTS (a stop
# check each) and about this many bytes of them.
_BLOCK_BYTES = 1 << 20


def _directional(group: Group, derivatives: Sequence, tangents: np.ndarray, should_stop):
    """``sum_j d_j t[x_j]`` over the group's input positions j, added in position order as
    one position at a time would (the same bits), but a block of positions per NumPy call:
    their products stacked, then ``np.add.accumulate`` (each sum the one before plus the
    next product). One position at a time, a sum of a million inputs took 1.4 s."""
    shape = (len(group.nodes), tangents.shape[1])
    block = max(1, min(_POLL_INPUTS, _BLOCK_BYTES // max(1, 8 * shape[0] * shape[1])))
    total = None
    for start in range(0, len(derivatives), block):
        if start and should_stop():
            raise Cancelled()
        end = min(start + block, len(derivatives))
        ahead = 0 if total is None else 1  # the sum so far goes first
        sums = np.empty((ahead + end - start, *shape))
        products = sums[ahead:]
        # np.stack loops over its arrays in Python, a view each: one C call instead
        np.concatenate(
            derivatives[start:end], out=products.reshape((end - start) * shape[0], shape[1])
        )
        products *= tangents.take(group.args[start:end], axis=0)
        if ahead:
            sums[0] = total
        np.add.accumulate(sums, axis=0, out=sums)
        total = sums[-1].copy()
        del sums, products
    return total


def _stretch_locals(stretch: Stretch, values: np.ndarray, per_part) -> np.ndarray:
    """``per_part(part, ...)`` (one array per input position) laid out per edge of the
    stretch: shape (len(stretch.inputs), rows)."""
    local = np.empty((len(stretch.inputs), values.shape[1]))
    for part, positions in zip(stretch.parts, stretch.part_positions, strict=True):
        local[stretch.edges(positions, len(part.args))] = np.stack(per_part(part, values))
    return local


def _forward_stretch(stretch, local, tangents, should_stop) -> None:
    nodes, offsets, inputs = stretch.lists()
    for position, node in enumerate(nodes):
        if position % 1024 == 0 and should_stop():
            raise Cancelled()
        start, end = offsets[position], offsets[position + 1]
        total = local[start] * tangents[inputs[start]]
        for edge in range(start + 1, end):
            total += local[edge] * tangents[inputs[edge]]
        tangents[node] = total


def _second_directional(group: Group, values: np.ndarray, tangents: np.ndarray, should_stop):
    """Per input position j, ``sum_k H_jk t[x_k]``: how the group's local derivatives move
    along the tangents, shaped (positions, nodes, rows); None for an op linear in its
    inputs. The inputs' values go to the op straight from one gathered array, with no list
    of them beside its arguments (a sum of a million inputs has a million, 130 MB)."""
    y = values.take(group.nodes, axis=0)
    k = len(group.args)
    try:
        pairs = group.op.second(y, *values.take(group.args, axis=0))
    except MemoryError:  # the server's, not the plugin's: RESOURCE_EXHAUSTED
        raise
    except Exception as exc:
        raise OpFailure(group.op.name, int(group.nodes[0]), "failed in second") from exc
    if not isinstance(pairs, tuple | list) or len(pairs) not in (0, k * (k + 1) // 2):
        raise OpFailure(
            group.op.name,
            int(group.nodes[0]),
            f"second must return {k * (k + 1) // 2} array(s) (pairs i <= j) or ()",
        )
    if not pairs:
        return None
    pairs = (op_calls.checked(group, h, "second", y.shape) for h in pairs)
    ts = tangents.take(group.args, axis=0)
    moved = np.zeros((k, *y.shape))
    done = 0  # pairs: k inputs have k (k + 1) / 2 of them, polled as they go
    for i in range(k):
        for j in range(i, k):
            _poll(done, should_stop)
            done += 1
            h = next(pairs)
            moved[i] += h * ts[j]
            if j != i:
                moved[j] += h * ts[i]
    return moved


def _backward_tangents(plan, values, grads, tangents, grad_tangents, locals_, stop) -> None:
    """Fill ``grad_tangents`` in reverse step order (forward-over-reverse). Each step's
    local derivatives are let go of (taken off ``locals_``) once it is done."""
    for step in reversed(plan.steps):
        local = locals_.pop()
        if stop():
            raise Cancelled()
        if isinstance(step, Stretch):
            _backward_stretch(step, local, values, grads, tangents, grad_tangents, stop)
            continue
        upstream = grad_tangents.take(step.nodes, axis=0)
        g = grads.take(step.nodes, axis=0)
        # Every input position at once, shaped (positions, nodes, rows); the op's arrays
        # let go of before its second derivatives are taken.
        contributions = np.concatenate(local).reshape(len(local), *upstream.shape)
        del local
        contributions *= upstream
        moved = _second_directional(step, values, tangents, stop)
        if moved is not None:
            moved *= g
            contributions += moved
            del moved
        if stop():
            raise Cancelled()
        step.scatter.add_into(grad_tangents, contributions.reshape(-1, values.shape[1]))


def _backward_stretch(stretch, local, values, grads, tangents, grad_tangents, stop) -> None:
    """A chain: the second-order terms of every edge in one call per part (gradients and
    tangents are known by now), then the propagation node by node."""

    def moved_of(part: Group, values: np.ndarray) -> np.ndarray | list[np.ndarray]:
        moved = _second_directional(part, values, tangents, stop)
        zero = np.zeros((len(part.nodes), values.shape[1]))
        return moved if moved is not None else [zero] * len(part.args)

    moved = _stretch_locals(stretch, values, moved_of)
    nodes, offsets, inputs = stretch.lists()
    for position in range(len(nodes) - 1, -1, -1):
        if position % 1024 == 0 and stop():
            raise Cancelled()
        node = nodes[position]
        upstream, g = grad_tangents[node], grads[node]
        for edge in range(offsets[position], offsets[position + 1]):
            grad_tangents[inputs[edge]] += local[edge] * upstream + g * moved[edge]


_POLL_INPUTS = 4096  # input positions (or pairs) of a group between two stop checks


def _poll(position: int, should_stop) -> None:
    """Every _POLL_INPUTS input positions (or pairs of them), raise Cancelled when the
    caller has gone."""
    if position % _POLL_INPUTS == _POLL_INPUTS - 1 and should_stop():
        raise Cancelled()


def _check_finite(plan: Plan, array: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        node = int(bad[0])
        row = array[node]
        value = float(row[~np.isfinite(row)][0])
        raise GraphError(
            f"the {what} is {value!r}: a leaf tangent is not finite or a derivative "
            "overflowed; set allow_non_finite in the request to pass NaN and Inf through",
            node=node,
            field="leaf_tangents",
        )
