"""Run a Plan: forward over its groups, then reverse-mode autodiff back over them.

Each group is one vectorized call of its op. Gradients are scatter-added (``np.add.at``)
so that a node read by several nodes, or twice by one node as in ``x*x``, receives every
contribution. Nothing here recurses, so graph depth is limited only by memory.
"""

from collections.abc import Callable

import numpy as np

from gradserve.server import finite
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
    allow_non_finite: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return every node's value and its gradient of ``sum(seeds * outputs)``.

    ``should_stop`` is polled between groups; when it returns True the evaluation is
    abandoned with ``Cancelled``. Unless ``allow_non_finite``, a NaN or Inf value or
    gradient is a GraphError naming the node where it starts.
    """
    leaf_values = np.asarray(leaf_values, dtype=np.float64)
    if len(leaf_values) != len(plan.leaves):
        missing = len(leaf_values) < len(plan.leaves)
        node = int(plan.leaves[len(leaf_values)]) if missing else None
        raise GraphError(
            f"the graph has {len(plan.leaves)} leaves but leaf_values has {len(leaf_values)} "
            "entries (one per leaf, in id order)"
            + (f"; leaf {plan.describe(node)} has no value" if missing else ""),
            field="graph.leaf_values",
        )
    values = np.empty(plan.node_count, dtype=np.float64)
    values[plan.leaves] = leaf_values
    for group in plan.groups:
        if should_stop():
            raise Cancelled()
        values[group.nodes] = _forward(group, [values[a] for a in group.args])
    if not allow_non_finite:
        finite.check_values(plan, values)

    grads = np.zeros(plan.node_count, dtype=np.float64)
    np.add.at(grads, outputs, seeds)
    for group in reversed(plan.groups):
        if should_stop():
            raise Cancelled()
        local = _backward(group, grads[group.nodes], values[group.nodes], values)
        for arg, grad in zip(group.args, local, strict=True):
            np.add.at(grads, arg, grad)
    if not allow_non_finite:
        finite.check_grads(grads)
    return values, grads


def _forward(group: Group, xs: list[np.ndarray]) -> np.ndarray:
    op = group.op
    try:
        inside = None if op.domain is None else op.domain(*xs)
        if inside is None or np.all(inside):
            with np.errstate(all="ignore"):  # inf and NaN follow IEEE rules, silently
                y = op.forward(*xs)
    except Exception as exc:
        raise OpFailure(op.name, int(group.nodes[0]), "failed in forward") from exc
    if inside is not None and not np.all(inside):
        if np.shape(inside) != group.nodes.shape:
            raise OpFailure(op.name, int(group.nodes[0]), "domain returned the wrong shape")
        first = int(np.argmin(inside))
        args = ", ".join(repr(float(x[first])) for x in xs)
        raise GraphError(
            f"op {op.name!r} is not defined at ({args}); see its domain in ListOps",
            node=int(group.nodes[first]),
            field="graph.leaf_values",
        )
    return _checked(group, y, "forward")


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
    return [_checked(group, d, "backward") for d in local]


def _checked(group: Group, result: object, phase: str) -> np.ndarray:
    """The op's result as a float64 array of the group's shape, or OpFailure."""
    node = int(group.nodes[0])
    if not isinstance(result, np.ndarray):
        raise OpFailure(group.op.name, node, f"{phase} returned {type(result).__name__}")
    if result.dtype.kind not in "fiu":
        raise OpFailure(group.op.name, node, f"{phase} returned dtype {result.dtype}")
    if result.shape != group.nodes.shape:
        raise OpFailure(
            group.op.name,
            node,
            f"{phase} returned shape {result.shape}, expected {group.nodes.shape}",
        )
    return result.astype(np.float64, copy=False)
