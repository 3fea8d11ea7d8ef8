"""A Stretch (a chain) with one row of values, run on Python floats.

A NumPy call on 1-element arrays costs about a microsecond, most of a chain's time when it
is made once per node. Here the forward calls the ops' scalar forwards in a loop over a
list of floats, and the backward propagates gradients over a list the same way; NumPy only
moves the values in and out, once per stretch. The list holds the values of
``stretch.outside`` followed by those of ``stretch.nodes``, so each result is appended.
"""

from collections.abc import Callable
from itertools import islice

import numpy as np

from gradserve.server.engine import op_calls
from gradserve.server.engine.errors import Cancelled, OpFailure
from gradserve.server.engine.plan import Stretch

POLL_EVERY = 1024  # nodes between two calls of should_stop (a few hundred microseconds)

# What math and float operators raise where NumPy returns inf or NaN (math.exp(1000),
# math.log(0), 1.0 / 0.0): that node is computed by the op's array forward instead.
_NOT_IEEE = (ArithmeticError, ValueError)


def forward(
    stretch: Stretch,
    values: np.ndarray,
    should_stop: Callable[[], bool],
) -> None:
    """Fill ``values[stretch.nodes, 0]`` with the scalar forwards (``stretch.scalars``).

    Where a scalar forward raises an ArithmeticError or ValueError, the node's op array
    forward (``op_calls.forward_node``) takes over.
    """
    v = values[stretch.outside, 0].tolist()
    start = len(v)
    first, second = stretch.local_pairs()
    program = zip(stretch.scalars, first, second, strict=True)
    append = v.append
    while len(v) - start < len(stretch.nodes):
        if should_stop():
            raise Cancelled()
        try:
            for scalar, a, b in islice(program, POLL_EVERY):
                append(scalar(v[a]) if b < 0 else scalar(v[a], v[b]))
        except _NOT_IEEE:
            position = len(v) - start
            xs = [np.array([v[a]]) for a in _inputs_of(position, first, second)]
            append(float(op_calls.forward_node(stretch, position, xs)[0]))
        except MemoryError:  # the server's, not the plugin's: RESOURCE_EXHAUSTED
            raise
        except Exception as exc:
            _check_floats(stretch, v[start:])  # once: the call fails either way
            raise _failure(stretch, len(v) - start, "failed in forward") from exc
    results = np.array(v[start:])
    if results.dtype != np.float64:
        _check_floats(stretch, v[start:])
    values[stretch.nodes, 0] = results


def _inputs_of(position: int, first: list[int], second: list[int]) -> list[int]:
    return [first[position]] if second[position] < 0 else [first[position], second[position]]


def _check_floats(stretch: Stretch, results: list) -> None:
    """Raise OpFailure for the first node whose scalar forward returned something other than
    a float: a later node may have failed on it, not by its own fault."""
    for position, y in enumerate(results):
        if not isinstance(y, float):
            raise _failure(stretch, position, f"scalar forward returned {type(y).__name__}")


def _failure(stretch: Stretch, position: int, problem: str) -> OpFailure:
    return OpFailure(stretch.ops[position].name, int(stretch.nodes[position]), problem)


def backward(
    stretch: Stretch, local: np.ndarray, grads: np.ndarray, should_stop: Callable[[], bool]
) -> None:
    """Propagate ``grads[:, 0]`` back through the stretch, given each input's local
    derivative (``local``, one per entry of ``stretch.inputs``).

    Only the edges between the stretch's own nodes need the loop, taken in reverse order:
    every reader of a node comes later in the stretch, so a node's gradient is complete
    before it is passed on. Nodes outside the stretch pass nothing on here, so what they
    receive is added in one vectorized step afterwards.
    """
    outside = len(stretch.outside)
    readers = stretch.readers()
    inputs = stretch.local_inputs - outside  # positions in the stretch; negative: outside
    within = inputs >= 0
    g = grads[stretch.nodes, 0].tolist()
    edges = zip(
        reversed(readers[within].tolist()),
        reversed(inputs[within].tolist()),
        reversed(local[within].tolist()),
        strict=True,
    )
    for polled in range(0, int(within.sum()), POLL_EVERY * 16):
        if polled and should_stop():  # a plain float step: poll 16x less often than forward
            raise Cancelled()
        for reader, node, d in islice(edges, POLL_EVERY * 16):
            g[node] += g[reader] * d
    g = np.array(g)
    grads[stretch.nodes, 0] = g
    from_outside = ~within
    received = g[readers[from_outside]] * local[from_outside]
    np.add.at(grads[:, 0], stretch.inputs[from_outside], received)
