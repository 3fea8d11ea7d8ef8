"""Non-finite numbers (NaN, +-Inf) are the client's error unless the request allows them.

Ids are topological, so the lowest-id node with a non-finite value has only finite inputs:
it is where the trouble starts (a leaf given as NaN, or an op that overflowed). Gradients
flow the other way, so for them the highest-id node is the origin.
"""

import numpy as np

from gradserve.server.engine.errors import GraphError
from gradserve.server.engine.plan import Plan

_HOW_TO_ALLOW = "set allow_non_finite in the request to pass NaN and Inf through, IEEE-style"


def _first_bad(array: np.ndarray, last: bool = False) -> tuple[int, float] | None:
    """The (node, value) of the first (or last) node, in any row, that is not finite."""
    finite = np.isfinite(array)
    if finite.all():
        return None
    bad = np.flatnonzero(~finite.all(axis=1))
    if not bad.size:
        return None
    node = int(bad[-1] if last else bad[0])
    row = array[node]
    return node, float(row[~np.isfinite(row)][0])


def check_values(plan: Plan, values: np.ndarray) -> None:
    """Raise GraphError naming the first node whose forward value is not finite.

    ``values`` has shape (nodes, rows)."""
    first = _first_bad(values)
    if first is None:
        return
    node, value = first
    leaf = int(np.searchsorted(plan.leaves, node))
    if leaf < len(plan.leaves) and plan.leaves[leaf] == node:
        reason = f"leaf value {value!r} is not finite; {_HOW_TO_ALLOW}"
        raise GraphError(reason, node=node, field="graph.leaf_values", index=leaf)
    reason = f"the op produced {value!r} from finite inputs; {_HOW_TO_ALLOW}"
    raise GraphError(reason, node=node, field="graph.node_ops", index=node)


def check_grads(grads: np.ndarray) -> None:
    """Raise GraphError naming the node where non-finite gradients start.

    ``grads`` has shape (nodes, rows)."""
    last = _first_bad(grads, last=True)
    if last is not None:
        node, value = last
        raise GraphError(
            f"the gradient reaching this node is {value!r}: a seed is not finite or a "
            f"derivative of one of its readers overflowed; {_HOW_TO_ALLOW}",
            node=node,
            field="graph.node_ops",
            index=node,
        )
