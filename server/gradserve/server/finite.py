"""Non-finite numbers (NaN, +-Inf) are the client's error unless the request allows them.

Ids are topological, so the lowest-id node with a non-finite value has only finite inputs:
it is where the trouble starts (a leaf given as NaN, or an op that overflowed). Gradients
flow the other way, so for them the highest-id node is the origin.
"""

import numpy as np

from gradserve.server.errors import GraphError
from gradserve.server.plan import Plan

_HOW_TO_ALLOW = "set allow_non_finite in the request to pass NaN and Inf through, IEEE-style"


def check_values(plan: Plan, values: np.ndarray) -> None:
    """Raise GraphError naming the first node whose forward value is not finite."""
    bad = np.flatnonzero(~np.isfinite(values))
    if not bad.size:
        return
    node = int(bad[0])
    if np.isin(node, plan.leaves):
        reason = f"leaf value {values[node]!r} is not finite; {_HOW_TO_ALLOW}"
        field = "graph.leaf_values"
    else:
        reason = f"the op produced {values[node]!r} from finite inputs; {_HOW_TO_ALLOW}"
        field = "graph.node_ops"
    raise GraphError(reason, node=node, field=field)


def check_grads(grads: np.ndarray) -> None:
    """Raise GraphError naming the node where non-finite gradients start."""
    bad = np.flatnonzero(~np.isfinite(grads))
    if bad.size:
        node = int(bad[-1])
        raise GraphError(
            f"the gradient reaching this node is {grads[node]!r}: a seed is not finite or a "
            f"derivative of one of its readers overflowed; {_HOW_TO_ALLOW}",
            node=node,
            field="graph.node_ops",
        )
