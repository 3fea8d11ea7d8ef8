"""One call of an op's array functions for a group of nodes, checked: what the plugin raised
becomes OpFailure naming the op and the node, a malformed result too, and inputs outside the
op's domain a GraphError naming the node. The evaluation loops (evaluate.py, the float
stretches, the tangents) all call ops through here."""

from collections.abc import Callable, Sequence

import numpy as np

from gradserve.server.engine.errors import Cancelled, GraphError, OpFailure
from gradserve.server.engine.plan import Group, Stretch, never_stop

POLL_POSITIONS = 65_536  # an op's results checked between two stop checks


def forward(group: Group, xs: list[np.ndarray]) -> np.ndarray:
    """The group's op forward on its inputs' values, after its domain check."""
    op = group.op
    try:
        inside = None if op.domain is None else _inside(op.domain, xs)
        outside = inside is not None and not np.all(inside)
        if not outside:
            y = op.forward(*xs)
    except MemoryError:  # the server's, not the plugin's: RESOURCE_EXHAUSTED
        raise
    except Exception as exc:
        raise OpFailure(op.name, int(group.nodes[0]), "failed in forward") from exc
    if outside:
        _raise_outside_domain(group, xs, inside)
    return checked(group, y, "forward", xs[0].shape)


def _inside(domain: Callable, xs: list[np.ndarray]) -> np.ndarray:
    """Where the inputs are inside the op's domain. A NaN input counts as inside: NaN
    propagates (IEEE 754), it is not a domain error (and it is there only when the request
    allows non-finite numbers, or as the finite check's business)."""
    inside = domain(*xs)
    if np.all(inside):
        return inside
    nan = np.isnan(xs[0])
    for x in xs[1:]:
        nan |= np.isnan(x)
    return inside | nan if np.shape(inside) == nan.shape else inside


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


def backward(
    group: Group,
    g: np.ndarray,
    y: np.ndarray,
    values: np.ndarray,
    should_stop: Callable[[], bool] = never_stop,
) -> Sequence[np.ndarray]:
    """The group's op backward: one gradient array per input position, checked one by one
    (a ``sum`` of a million inputs returns a million) with a stop check every
    POLL_POSITIONS; the op's own sequence when every one passes, without a copy of it."""
    try:
        local = group.op.backward(g, y, *values.take(group.args, axis=0))
    except MemoryError:  # the server's, not the plugin's: RESOURCE_EXHAUSTED
        raise
    except Exception as exc:
        raise OpFailure(group.op.name, int(group.nodes[0]), "failed in backward") from exc
    if not isinstance(local, tuple | list) or len(local) != len(group.args):
        raise OpFailure(
            group.op.name,
            int(group.nodes[0]),
            f"backward must return {len(group.args)} gradient(s), one per input",
        )
    converted = None  # a copy of ``local`` once a result needs converting: else none
    last = last_result = None  # an array returned for many positions is checked once
    for start in range(0, len(local), POLL_POSITIONS):
        if start and should_stop():
            raise Cancelled()
        for position, d in enumerate(local[start : start + POLL_POSITIONS], start):
            if d is not last:  # a sum returns (g,) * n: a million checks took 0.9 s
                last, last_result = d, checked(group, d, "backward", g.shape)
            if last_result is not d:
                if converted is None:
                    converted = list(local)
                converted[position] = last_result
    return local if converted is None else converted


def forward_node(stretch: Stretch, position: int, xs: list[np.ndarray]) -> np.ndarray:
    """One node of a stretch by its op's array forward."""
    op = stretch.ops[position]
    single = Group(op, stretch.nodes[position : position + 1], None)
    try:
        y = op.forward(*xs)
    except MemoryError:  # the server's, not the plugin's: RESOURCE_EXHAUSTED
        raise
    except Exception as exc:
        raise OpFailure(op.name, int(single.nodes[0]), "failed in forward") from exc
    return checked(single, y, "forward", xs[0].shape)


def checked(group: Group, result: object, phase: str, expected_shape: tuple) -> np.ndarray:
    """The op's result as a float64 array of the group's shape, or OpFailure."""
    if type(result) is np.ndarray and result.dtype == np.float64 and result.shape == expected_shape:
        return result  # the usual case, decided in a third of the time of the checks below
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
