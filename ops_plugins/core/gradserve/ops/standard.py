"""The standard ops, published through the ``gradserve.ops`` entry-point group.

As in micrograd, each op's local derivative stands right beside its forward. Forward and
backward take and return float64 arrays. Each op also has a scalar forward on Python floats,
for chains evaluated one node at a time: the same formula with ``math`` and operators, which
see only floats (never ints), and ``math.pow`` rather than ``**``, so no input can trigger
an unbounded integer computation or a complex result. Where ``math`` raises instead of
returning inf or NaN (``math.exp(1000)``, ``math.log(0)``), the engine falls back to the
array forward for that node.

Each op also has a scalar backward, its backward on floats, for small graphs evaluated on
floats from start to end: the array backward's formula in the same order, so the two round
alike (``c * c`` where the array backward squares with ``np.square``).
"""

import functools
import math
import operator

import numpy as np

from gradserve.ops.contract import Op, linear_second

# --- arithmetic -------------------------------------------------------------------------


def _add_backward(g, y, a, b):
    return g, g


add = Op(
    "add",
    2,
    forward=np.add,
    scalar=operator.add,
    backward=_add_backward,
    scalar_backward=_add_backward,
    second=linear_second,
    doc="a + b. Defined everywhere; d/da = d/db = 1.",
)


def _sub_backward(g, y, a, b):
    return g, -g


sub = Op(
    "sub",
    2,
    forward=np.subtract,
    scalar=operator.sub,
    backward=_sub_backward,
    scalar_backward=_sub_backward,
    second=linear_second,
    doc="a - b. Defined everywhere; d/da = 1, d/db = -1.",
)


def _neg_backward(g, y, x):
    return (-g,)


neg = Op(
    "neg",
    1,
    forward=np.negative,
    scalar=operator.neg,
    backward=_neg_backward,
    scalar_backward=_neg_backward,
    second=linear_second,
    doc="-x. Defined everywhere; d/dx = -1.",
)


def _mul_backward(g, y, a, b):
    return g * b, g * a


def _mul_second(y, a, b):
    return np.zeros_like(a), np.ones_like(a), np.zeros_like(a)


mul = Op(
    "mul",
    2,
    forward=np.multiply,
    scalar=operator.mul,
    backward=_mul_backward,
    scalar_backward=_mul_backward,
    second=_mul_second,
    doc="a * b. Defined everywhere; d/da = b, d/db = a.",
)


def _div_backward(g, y, a, b):
    return g / b, -g * y / b


def _div_second(y, a, b):
    # d2/da2 = 0, d2/da db = -1/b^2, d2/db2 = 2a/b^3 = 2y/b^2.
    inverse_square = 1.0 / np.square(b)
    return np.zeros_like(a), -inverse_square, 2.0 * y * inverse_square


div = Op(
    "div",
    2,
    forward=np.divide,
    scalar=operator.truediv,
    backward=_div_backward,
    scalar_backward=_div_backward,
    second=_div_second,
    domain=lambda a, b: b != 0,
    doc="a / b. Domain: b != 0 (a zero divisor is the client's error, not inf). "
    "d/da = 1/b, d/db = -a/b^2.",
)


def _sum_forward(*xs):
    return functools.reduce(np.add, xs)


def _sum_scalar(*xs):
    return functools.reduce(operator.add, xs)


def _sum_backward(g, y, *xs):
    return (g,) * len(xs)


sum_ = Op(
    "sum",
    None,
    forward=_sum_forward,
    scalar=_sum_scalar,
    backward=_sum_backward,
    scalar_backward=_sum_backward,
    second=linear_second,
    doc="x1 + x2 + ... + xn, for one or more inputs (variadic). Defined everywhere; d/dxi = 1.",
)

# --- powers, exponentials and logarithms ------------------------------------------------


def _pow_domain(x, p):
    # Real-valued powers only: a negative base needs an integer exponent, and 0 needs p >= 0.
    return (x > 0) | ((x == 0) & (p >= 0)) | ((x < 0) & (p == np.round(p)))


def _pow_backward(g, y, x, p):
    dx = np.where(p == 0, 0.0, p * np.power(x, p - 1))
    dp = np.where(x > 0, y * np.log(np.where(x > 0, x, 1.0)), 0.0)
    return g * dx, g * dp


def _pow_scalar_backward(g, y, x, p):
    dx = 0.0 if p == 0 else p * math.pow(x, p - 1)
    dp = y * math.log(x) if x > 0 else 0.0
    return g * dx, g * dp


def _pow_second(y, x, p):
    # The derivatives of _pow_backward's: d2/dx2 = p (p-1) x^(p-2) (0 where p is 0 or 1,
    # whose first derivative is constant); d2/dx dp = x^(p-1) (1 + p log x) and
    # d2/dp2 = x^p log(x)^2 where x > 0, and 0 elsewhere, as d/dp is 0 there.
    positive = x > 0
    log_x = np.log(np.where(positive, x, 1.0))
    dxx = np.where((p == 0) | (p == 1), 0.0, p * (p - 1) * np.power(x, p - 2))
    dxp = np.where(positive, np.power(x, p - 1) * (1.0 + p * log_x), 0.0)
    dpp = np.where(positive, y * np.square(log_x), 0.0)
    return dxx, dxp, dpp


pow_ = Op(
    "pow",
    2,
    forward=np.power,
    scalar=math.pow,
    backward=_pow_backward,
    scalar_backward=_pow_scalar_backward,
    second=_pow_second,
    domain=_pow_domain,
    doc="x ** p, both inputs nodes. Domain: x > 0; x == 0 with p >= 0; x < 0 with an integer "
    "p (real results only, never complex). d/dx = p * x^(p-1) (0 when p == 0; inf at "
    "x == 0 for 0 < p < 1). d/dp = x^p * log(x) where x > 0; 0 at x == 0 (the limit from "
    "x > 0 for p > 0) and where x < 0, where it does not exist over the reals: so a constant "
    "integer exponent of a negative base, as in micrograd's e**2, gets no NaN. Second "
    "derivatives: the closed forms where x > 0; where x <= 0 the ones involving p are 0, as "
    "d/dp is.",
)


def _exp_backward(g, y, x):
    return (g * y,)


def _exp_second(y, x):
    return (y,)


exp = Op(
    "exp",
    1,
    forward=np.exp,
    scalar=math.exp,
    backward=_exp_backward,
    scalar_backward=_exp_backward,
    second=_exp_second,
    doc="e^x. Defined everywhere (overflows to inf above about 709.78). d/dx = e^x.",
)


def _log_backward(g, y, x):
    return (g / x,)


def _log_second(y, x):
    return (-1.0 / np.square(x),)


log = Op(
    "log",
    1,
    forward=np.log,
    scalar=math.log,
    backward=_log_backward,
    scalar_backward=_log_backward,
    second=_log_second,
    domain=lambda x: x > 0,
    doc="Natural logarithm. Domain: x > 0. d/dx = 1/x.",
)


def _sqrt_backward(g, y, x):
    return (g * 0.5 / y,)


def _sqrt_second(y, x):
    return (-0.25 / (x * y),)  # -1 / (4 x^(3/2)); -inf at x = 0


sqrt = Op(
    "sqrt",
    1,
    forward=np.sqrt,
    scalar=math.sqrt,
    backward=_sqrt_backward,
    scalar_backward=_sqrt_backward,
    second=_sqrt_second,
    domain=lambda x: x >= 0,
    doc="Square root. Domain: x >= 0. d/dx = 1 / (2 sqrt(x)), inf at x = 0.",
)

# --- activations ------------------------------------------------------------------------


def _tanh_backward(g, y, x):
    # The upstream gradient g multiplies the local derivative (the notebook forgot it).
    # 1/cosh(x)^2 rather than 1 - tanh(x)^2, which rounds to 0 for |x| > 19 and loses all
    # relative accuracy well before; cosh overflowing to inf gives the right limit, 0.
    return (g / np.square(np.cosh(x)),)


def _tanh_scalar_backward(g, y, x):
    c = math.cosh(x)  # raises OverflowError for |x| > 710, where the array backward gives 0
    return (g / (c * c),)


def _tanh_second(y, x):
    return (-2.0 * y / np.square(np.cosh(x)),)  # -2 tanh(x) / cosh(x)^2


tanh = Op(
    "tanh",
    1,
    forward=np.tanh,
    scalar=math.tanh,
    backward=_tanh_backward,
    scalar_backward=_tanh_scalar_backward,
    second=_tanh_second,
    doc="tanh(x), computed by the library (no overflow for large |x|). "
    "Defined everywhere; d/dx = 1 - tanh(x)^2, computed as 1/cosh(x)^2.",
)


def _sigmoid_forward(x):
    # exp of a non-positive number only, so nothing overflows for any x.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _sigmoid_scalar(x):
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


def _sigmoid_backward(g, y, x):
    # e^-|x| / (1 + e^-|x|)^2 rather than y (1 - y): 1 - y rounds to 0 for x > 37, where the
    # derivative is still about e^-x.
    e = np.exp(-np.abs(x))
    return (g * (e / np.square(1.0 + e)),)


def _sigmoid_scalar_backward(g, y, x):
    e = math.exp(-abs(x))
    return (g * (e / ((1.0 + e) * (1.0 + e))),)


def _sigmoid_second(y, x):
    # s'' = s' (1 - 2s), and 1 - 2 sigmoid(x) = -tanh(x/2): no cancellation for large |x|.
    e = np.exp(-np.abs(x))
    return (-(e / np.square(1.0 + e)) * np.tanh(0.5 * x),)


sigmoid = Op(
    "sigmoid",
    1,
    forward=_sigmoid_forward,
    scalar=_sigmoid_scalar,
    backward=_sigmoid_backward,
    scalar_backward=_sigmoid_scalar_backward,
    second=_sigmoid_second,
    doc="1 / (1 + e^-x), in a form that never overflows. Defined everywhere; "
    "d/dx = sigmoid(x) (1 - sigmoid(x)), computed as e^-|x| / (1 + e^-|x|)^2.",
)


def _softplus_forward(x):
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _softplus_scalar(x):
    return _relu_scalar(x) + math.log1p(math.exp(-abs(x)))


def _softplus_backward(g, y, x):
    return (g * _sigmoid_forward(x),)


def _softplus_scalar_backward(g, y, x):
    return (g * _sigmoid_scalar(x),)


def _softplus_second(y, x):
    e = np.exp(-np.abs(x))
    return (e / np.square(1.0 + e),)  # sigmoid'(x)


softplus = Op(
    "softplus",
    1,
    forward=_softplus_forward,
    scalar=_softplus_scalar,
    backward=_softplus_backward,
    scalar_backward=_softplus_scalar_backward,
    second=_softplus_second,
    doc="log(1 + e^x), as max(x, 0) + log1p(e^-|x|) so it never overflows. Defined "
    "everywhere; d/dx = sigmoid(x).",
)


def _relu_scalar(x):
    # As np.maximum(x, 0.0): NaN stays NaN, and -0.0 gives 0.0.
    return x if x > 0.0 or x != x else 0.0


def _relu_backward(g, y, x):
    return (g * (x > 0),)


def _relu_scalar_backward(g, y, x):
    return (g * (1.0 if x > 0.0 else 0.0),)


def _relu_second(y, x):
    return (np.zeros_like(x),)  # piecewise linear; 0 at the kink too, as PyTorch


relu = Op(
    "relu",
    1,
    forward=lambda x: np.maximum(x, 0.0),
    scalar=_relu_scalar,
    backward=_relu_backward,
    scalar_backward=_relu_scalar_backward,
    second=_relu_second,
    doc="max(x, 0). Defined everywhere; d/dx = 1 for x > 0, else 0 (0 at x = 0, as in "
    "micrograd and PyTorch); second derivative 0 everywhere, the kink included.",
)


def _abs_backward(g, y, x):
    return (g * np.sign(x),)


def _abs_scalar_backward(g, y, x):
    # np.sign: 1.0, -1.0, 0.0 at either zero, NaN at NaN.
    return (g * (1.0 if x > 0.0 else -1.0 if x < 0.0 else 0.0 if x == 0.0 else x),)


def _abs_second(y, x):
    return (np.zeros_like(x),)  # piecewise linear; 0 at the kink too, as PyTorch


abs_ = Op(
    "abs",
    1,
    forward=np.abs,
    scalar=abs,
    backward=_abs_backward,
    scalar_backward=_abs_scalar_backward,
    second=_abs_second,
    doc="|x|. Defined everywhere; d/dx = sign(x), 0 at x = 0 (as PyTorch); second derivative 0 "
    "everywhere, x = 0 included.",
)

# --- trigonometry -----------------------------------------------------------------------


def _sin_backward(g, y, x):
    return (g * np.cos(x),)


def _sin_scalar_backward(g, y, x):
    return (g * math.cos(x),)


def _sin_second(y, x):
    return (-y,)


sin = Op(
    "sin",
    1,
    forward=np.sin,
    scalar=math.sin,
    backward=_sin_backward,
    scalar_backward=_sin_scalar_backward,
    second=_sin_second,
    doc="sin(x), x in radians. Defined everywhere; d/dx = cos(x).",
)


def _cos_backward(g, y, x):
    return (-g * np.sin(x),)


def _cos_scalar_backward(g, y, x):
    return (-g * math.sin(x),)


def _cos_second(y, x):
    return (-y,)


cos = Op(
    "cos",
    1,
    forward=np.cos,
    scalar=math.cos,
    backward=_cos_backward,
    scalar_backward=_cos_scalar_backward,
    second=_cos_second,
    doc="cos(x), x in radians. Defined everywhere; d/dx = -sin(x).",
)

# --- comparisons ------------------------------------------------------------------------


def _max_scalar(a, b):
    # As np.maximum: NaN if either is NaN, and b when a == b (which decides the sign of 0).
    return a if a > b or a != a else b


def _max_backward(g, y, a, b):
    # Ties split the gradient evenly, so that max(x, x) has gradient 1 with respect to x.
    share = np.where(a == b, 0.5, 1.0)
    return g * share * (a >= b), g * share * (b >= a)


def _max_scalar_backward(g, y, a, b):
    share = 0.5 if a == b else 1.0
    return g * share * (a >= b), g * share * (b >= a)


def _extremum_second(y, a, b):
    # Piecewise linear: every second derivative 0, at a tie too (as PyTorch).
    zero = np.zeros_like(a)
    return zero, zero, zero


max_ = Op(
    "max",
    2,
    forward=np.maximum,
    scalar=_max_scalar,
    backward=_max_backward,
    scalar_backward=_max_scalar_backward,
    second=_extremum_second,
    doc="The larger of a and b. Defined everywhere; d/da = 1 where a > b, 0 where a < b; "
    "on a tie a and b get half of the gradient each (as PyTorch's maximum). Second derivatives 0 "
    "everywhere, ties included.",
)


def _min_scalar(a, b):
    return a if a < b or a != a else b


def _min_backward(g, y, a, b):
    share = np.where(a == b, 0.5, 1.0)
    return g * share * (a <= b), g * share * (b <= a)


def _min_scalar_backward(g, y, a, b):
    share = 0.5 if a == b else 1.0
    return g * share * (a <= b), g * share * (b <= a)


min_ = Op(
    "min",
    2,
    forward=np.minimum,
    scalar=_min_scalar,
    backward=_min_backward,
    scalar_backward=_min_scalar_backward,
    second=_extremum_second,
    doc="The smaller of a and b. Defined everywhere; d/da = 1 where a < b, 0 where a > b; "
    "on a tie a and b get half of the gradient each (as PyTorch's minimum). Second derivatives 0 "
    "everywhere, ties included.",
)
