"""Reading ``.data`` of an op node not evaluated yet: evaluate what is pending on its tape.

micrograd computes a node's data when the node is built; gradserve records the node and
computes nothing. When a program reads such a node's ``.data`` (``print(c)``, the lecture's
``"%.4f" % n.data``), every op-node Value still pending on that tape is evaluated in one
call to the default server, so reading a whole graph node by node costs one call, not one per
node. Gradients are left as they are (the call's seeds are 0): a backward fills them.
"""

import numpy as np

from gradserve.client import default, remote


def evaluate(tape) -> None:
    """Set ``.data`` of the tape's pending op-node Values; ``NoServerConfigured`` without a
    default server (micrograd's README demo would otherwise format None)."""
    client = default.client()
    waiting = [value for value in tape.live_values() if value._data is None]
    if not waiting:
        return
    values = client.evaluate(waiting, wrt=[], seeds=[0.0] * len(waiting)).outputs
    for value, x in zip(waiting, values.tolist(), strict=True):
        value._data = x
    known = tape.results
    nodes = np.array([value._id for value in waiting], dtype=np.int64)
    if known is None or len(known[0]) != len(tape):
        tape.remember(nodes, values, np.zeros(len(nodes)))
    else:  # keep the gradients of nodes a backward filled
        known[0][nodes] = values
        known[1][nodes] = np.where(np.isnan(known[1][nodes]), 0.0, known[1][nodes])


remote.evaluate_pending = evaluate
