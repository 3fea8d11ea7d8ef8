"""Run a Plan: forward over its groups, then reverse-mode autodiff back over them.

Each group is one vectorized call of its op. Gradients are scatter-added (``np.add.at``)
so that a node read by several nodes, or twice by one node as in ``x*x``, receives every
contribution. Nothing here recurses, so graph depth is limited only by memory.
"""

from collections.abc import Callable

import numpy as np

from gradserve.server.errors import Cancelled, GraphError, OpFailure
from gradserve.server.plan import Group, Plan


def _never() -> bool:
    return False


def evaluate(
    plan: Plan,
    leaf_values: np.ndarray,
    outputs: np.ndarray,
    seeds: np.ndarray,
    should_stop: Callable[[], bool] = _never,
) -> tuple[np.ndarray, np.ndarray]:
    """Return every node's value and its gradient of ``sum(seeds * outputs)``.

    ``leaf_values`` is one row (shape ``(L,)``, one value per leaf) or several (shape
    ``(B, L)``); the results are shaped ``(n,)`` or ``(n, B)`` to match. Rows are evaluated
    together: every op call sees arrays of shape ``(group size, B)``. ``should_stop`` is
    polled between groups; when it returns True the evaluation is abandoned (Cancelled).
    """
    leaf_values = np.asarray(leaf_values, dtype=np.float64)
    single_row = leaf_values.ndim == 1
    rows = np.atleast_2d(leaf_values)
    _check_leaf_count(plan, rows.shape[1])
    values = np.empty((plan.node_count, rows.shape[0]), dtype=np.float64)
    values[plan.leaves] = rows.T
    for group in plan.groups:
        if should_stop():
            raise Cancelled()
        values[group.nodes] = _forward(group, [values[a] for a in group.args])

    grads = np.zeros_like(values)
    np.add.at(grads, outputs, np.asarray(seeds, dtype=np.float64)[:, None])
    for group in reversed(plan.groups):
        if should_stop():
            raise Cancelled()
        local = _backward(group, grads[group.nodes], values[group.nodes], values)
        for arg, grad in zip(group.args, local, strict=True):
            np.add.at(grads, arg, grad)
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


def _forward(group: Group, xs: list[np.ndarray]) -> np.ndarray:
    op = group.op
    try:
        inside = True if op.domain is None else op.domain(*xs)
        outside = not np.all(inside)
        if not outside:
            with np.errstate(all="ignore"):  # inf and NaN follow IEEE rules, silently
                y = op.forward(*xs)
    except Exception as exc:
        raise OpFailure(op.name, int(group.nodes[0]), "failed in forward") from exc
    if outside:
        _raise_outside_domain(group, xs, inside)
    return _checked(group, y, "forward", xs[0].shape)


def _raise_outside_domain(group: Group, xs: list[np.ndarray], inside: np.ndarray) -> None:
    if np.shape(inside) != xs[0].shape:
        raise OpFailure(group.op.name, int(group.nodes[0]), "domain returned the wrong shape")
    member, row = np.unravel_index(np.argmin(inside), xs[0].shape)
    args = ", ".join(repr(float(x[member, row])) for x in xs)
    where = f" in row {row}" if xs[0].shape[1] > 1 else ""
    raise GraphError(
        f"op {group.op.name!r} is not defined at ({args}){where}; see its domain in ListOps",
        node=int(group.nodes[member]),
        field="graph.leaf_values",
    )


def _backward(group: Group, g: np.ndarray, y: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    try:
        with np.errstate(all="ignore"):
            local = group.op.backward(g, y, *(values[a] for a in group.args))
    except Exception as exc:
        raise OpFailure(group.op.name, int(group.nodes[0]), "failed in backward") from exc
    if not isinstance(local, tuple | list) or len(local) != len(group.args):
        raise OpFailure(
            group.op.name,
            int(group.nodes[0]),
            f"backward must return {len(group.args)} gradient(s), one per input",
        )
    return [_checked(group, d, "backward", g.shape) for d in local]


def _checked(group: Group, result: object, phase: str, expected_shape: tuple) -> np.ndarray:
    """The op's result as a float64 array of the group's shape, or OpFailure."""
    node = int(group.nodes[0])
    if not isinstance(result, np.ndarray):
        raise OpFailure(group.op.name, node, f"{phase} returned {type(result).__name__}")
    if result.dtype.kind not in "fiu":
        raise OpFailure(group.op.name, node, f"{phase} returned dtype {result.dtype}")
    if result.shape != expected_shape:
        raise OpFailure(
            group.op.name, node, f"{phase} returned shape {result.shape}, expected {expected_shape}"
        )
    return result.astype(np.float64, copy=False)
