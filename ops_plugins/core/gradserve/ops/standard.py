"""The standard ops, published through the ``gradserve.ops`` entry-point group.

As in micrograd, each op's local derivative stands right beside its forward.
"""

import numpy as np

from gradserve.ops.contract import Op


def _add_backward(g, y, a, b):
    return g, g


add = Op(
    "add",
    2,
    forward=np.add,
    backward=_add_backward,
    doc="a + b. Defined everywhere; d/da = d/db = 1.",
)


def _mul_backward(g, y, a, b):
    return g * b, g * a


mul = Op(
    "mul",
    2,
    forward=np.multiply,
    backward=_mul_backward,
    doc="a * b. Defined everywhere; d/da = b, d/db = a.",
)


def _tanh_backward(g, y, x):
    # The upstream gradient g multiplies the local derivative (the notebook forgot it).
    return (g * (1.0 - y * y),)


tanh = Op(
    "tanh",
    1,
    forward=np.tanh,
    backward=_tanh_backward,
    doc="tanh(x), computed by the library (no overflow for large |x|). "
    "Defined everywhere; d/dx = 1 - tanh(x)^2.",
)
