"""The standard ops, published through the ``gradserve.ops`` entry-point group.

Each op is written once, as formulas (``gradserve.ops.formulas``): its value and, right
beside it as in micrograd, the gradient it passes to each input, ``g`` times the local
derivative. The array functions, the float functions (for chains and small graphs) and the
compiled small-call path's inline code are all rendered from these. On floats the formulas
see only floats and ``math.pow`` (never ``**``), so no input can trigger an unbounded integer
computation or a complex result; where ``math`` raises instead of returning inf or NaN
(``math.exp(1000)``, ``math.log(0)``), the engine falls back to the array functions.
"""

import numpy as np

from gradserve.ops.contract import linear_second
from gradserve.ops.formulas import formula_op

# --- arithmetic -------------------------------------------------------------------------

add = formula_op(
    "add",
    2,
    value=lambda m, a, b: a + b,
    grads=lambda m, g, y, a, b: (g, g),
    second=linear_second,
    doc="a + b. Defined everywhere; d/da = d/db = 1.",
)

sub = formula_op(
    "sub",
    2,
    value=lambda m, a, b: a - b,
    grads=lambda m, g, y, a, b: (g, -g),
    second=linear_second,
    doc="a - b. Defined everywhere; d/da = 1, d/db = -1.",
)

neg = formula_op(
    "neg",
    1,
    value=lambda m, x: -x,
    grads=lambda m, g, y, x: (-g,),
    second=linear_second,
    doc="-x. Defined everywhere; d/dx = -1.",
)

mul = formula_op(
    "mul",
    2,
    value=lambda m, a, b: a * b,
    grads=lambda m, g, y, a, b: (g * b, g * a),
    second=lambda m, y, a, b: (0.0, 1.0, 0.0),
    doc="a * b. Defined everywhere; d/da = b, d/db = a.",
)


def _div_second(m, y, a, b):
    # d2/da2 = 0, d2/da db = -1/b^2, d2/db2 = 2a/b^3 = 2y/b^2.
    inverse_square = 1.0 / m.square(b)
    return 0.0, -inverse_square, 2.0 * y * inverse_square


div = formula_op(
    "div",
    2,
    value=lambda m, a, b: a / b,
    grads=lambda m, g, y, a, b: (g / b, -g * y / b),
    second=_div_second,
    domain=lambda a, b: b != 0,
    doc="a / b. Domain: b != 0 (a zero divisor is the client's error, not inf). "
    "d/da = 1/b, d/db = -a/b^2.",
)

sum_ = formula_op(
    "sum",
    None,
    value=lambda m, *xs: m.total(xs),
    grads=lambda m, g, y, *xs: (g,) * len(xs),
    second=linear_second,
    doc="x1 + x2 + ... + xn, for one or more inputs (variadic). Defined everywhere; d/dxi = 1.",
)

# --- powers, exponentials and logarithms ------------------------------------------------


def _pow_domain(x, p):
    # Real-valued powers only: a negative base needs an integer exponent, and 0 needs p >= 0.
    return (x > 0) | ((x == 0) & (p >= 0)) | ((x < 0) & (p == np.round(p)))


def _pow_grads(m, g, y, x, p):
    dx = m.where(p == 0, 0.0, p * m.power(x, p - 1))
    dp = m.where(x > 0, y * m.log(m.where(x > 0, x, 1.0)), 0.0)
    return g * dx, g * dp


def _pow_second(m, y, x, p):
    # The derivatives of _pow_grads': d2/dx2 = p (p-1) x^(p-2) (0 where p is 0 or 1, whose
    # first derivative is constant); d2/dx dp = x^(p-1) (1 + p log x) and
    # d2/dp2 = x^p log(x)^2 where x > 0, and 0 elsewhere, as d/dp is 0 there.
    positive = x > 0
    log_x = m.log(m.where(positive, x, 1.0))
    dxx = m.where((p == 0) | (p == 1), 0.0, p * (p - 1) * m.power(x, p - 2))
    dxp = m.where(positive, m.power(x, p - 1) * (1.0 + p * log_x), 0.0)
    dpp = m.where(positive, y * m.square(log_x), 0.0)
    return dxx, dxp, dpp


pow_ = formula_op(
    "pow",
    2,
    value=lambda m, x, p: m.power(x, p),
    grads=_pow_grads,
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

exp = formula_op(
    "exp",
    1,
    value=lambda m, x: m.exp(x),
    grads=lambda m, g, y, x: (g * y,),
    second=lambda m, y, x: (y,),
    doc="e^x. Defined everywhere (overflows to inf above about 709.78). d/dx = e^x.",
)

log = formula_op(
    "log",
    1,
    value=lambda m, x: m.log(x),
    grads=lambda m, g, y, x: (g / x,),
    second=lambda m, y, x: (-1.0 / m.square(x),),
    domain=lambda x: x > 0,
    doc="Natural logarithm. Domain: x > 0. d/dx = 1/x.",
)

sqrt = formula_op(
    "sqrt",
    1,
    value=lambda m, x: m.sqrt(x),
    grads=lambda m, g, y, x: (g * 0.5 / y,),
    second=lambda m, y, x: (-0.25 / (x * y),),  # -1 / (4 x^(3/2)); -inf at x = 0
    domain=lambda x: x >= 0,
    doc="Square root. Domain: x >= 0. d/dx = 1 / (2 sqrt(x)), inf at x = 0.",
)

# --- activations ------------------------------------------------------------------------


def _tanh_grads(m, g, y, x):
    # The upstream gradient g multiplies the local derivative (the notebook forgot it).
    # 1/cosh(x)^2 rather than 1 - tanh(x)^2, which rounds to 0 for |x| > 19 and loses all
    # relative accuracy well before; cosh overflowing to inf gives the right limit, 0 (on
    # floats math.cosh raises OverflowError for |x| > 710: the array code takes over).
    return (g / m.square(m.cosh(x)),)


tanh = formula_op(
    "tanh",
    1,
    value=lambda m, x: m.tanh(x),
    grads=_tanh_grads,
    second=lambda m, y, x: _tanh_grads(m, -2.0 * y, y, x),  # -2 tanh(x) / cosh(x)^2
    doc="tanh(x), computed by the library (no overflow for large |x|). "
    "Defined everywhere; d/dx = 1 - tanh(x)^2, computed as 1/cosh(x)^2.",
)


def _sigmoid(m, x):
    # exp of a non-positive number only, so nothing overflows for any x.
    e = m.exp(-m.abs(x))
    return m.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _sigmoid_grads(m, g, y, x):
    # e^-|x| / (1 + e^-|x|)^2 rather than y (1 - y): 1 - y rounds to 0 for x > 37, where the
    # derivative is still about e^-x.
    e = m.exp(-m.abs(x))
    return (g * (e / m.square(1.0 + e)),)


sigmoid = formula_op(
    "sigmoid",
    1,
    value=_sigmoid,
    grads=_sigmoid_grads,
    # s'' = s' (1 - 2s), and 1 - 2 sigmoid(x) = -tanh(x/2): no cancellation for large |x|.
    second=lambda m, y, x: (-_sigmoid_grads(m, 1.0, y, x)[0] * m.tanh(0.5 * x),),
    doc="1 / (1 + e^-x), in a form that never overflows. Defined everywhere; "
    "d/dx = sigmoid(x) (1 - sigmoid(x)), computed as e^-|x| / (1 + e^-|x|)^2.",
)

softplus = formula_op(
    "softplus",
    1,
    value=lambda m, x: m.maximum(x, 0.0) + m.log1p(m.exp(-m.abs(x))),
    grads=lambda m, g, y, x: (g * _sigmoid(m, x),),
    second=lambda m, y, x: _sigmoid_grads(m, 1.0, y, x),  # sigmoid'(x)
    doc="log(1 + e^x), as max(x, 0) + log1p(e^-|x|) so it never overflows. Defined "
    "everywhere; d/dx = sigmoid(x).",
)

relu = formula_op(
    "relu",
    1,
    value=lambda m, x: m.maximum(x, 0.0),  # NaN stays NaN, and -0.0 gives 0.0
    grads=lambda m, g, y, x: (g * (x > 0),),
    second=lambda m, y, x: (0.0,),  # piecewise linear; 0 at the kink too, as PyTorch
    doc="max(x, 0). Defined everywhere; d/dx = 1 for x > 0, else 0 (0 at x = 0, as in "
    "micrograd and PyTorch); second derivative 0 everywhere, the kink included.",
)

abs_ = formula_op(
    "abs",
    1,
    value=lambda m, x: m.abs(x),
    grads=lambda m, g, y, x: (g * m.sign(x),),
    second=lambda m, y, x: (0.0,),  # piecewise linear; 0 at the kink too, as PyTorch
    doc="|x|. Defined everywhere; d/dx = sign(x), 0 at x = 0 (as PyTorch); second derivative 0 "
    "everywhere, x = 0 included.",
)

# --- trigonometry -----------------------------------------------------------------------

sin = formula_op(
    "sin",
    1,
    value=lambda m, x: m.sin(x),
    grads=lambda m, g, y, x: (g * m.cos(x),),
    second=lambda m, y, x: (-y,),
    doc="sin(x), x in radians. Defined everywhere; d/dx = cos(x).",
)

cos = formula_op(
    "cos",
    1,
    value=lambda m, x: m.cos(x),
    grads=lambda m, g, y, x: (-g * m.sin(x),),
    second=lambda m, y, x: (-y,),
    doc="cos(x), x in radians. Defined everywhere; d/dx = -sin(x).",
)

# --- comparisons ------------------------------------------------------------------------


def _extremum_grads(m, g, a_wins, b_wins, a, b):
    # Ties split the gradient evenly, so that max(x, x) has gradient 1 with respect to x.
    share = m.where(a == b, 0.5, 1.0)
    return g * share * a_wins, g * share * b_wins


def _extremum_second(m, y, a, b):
    return 0.0, 0.0, 0.0  # piecewise linear: every second derivative 0, at a tie too


max_ = formula_op(
    "max",
    2,
    value=lambda m, a, b: m.maximum(a, b),
    grads=lambda m, g, y, a, b: _extremum_grads(m, g, a >= b, b >= a, a, b),
    second=_extremum_second,
    doc="The larger of a and b. Defined everywhere; d/da = 1 where a > b, 0 where a < b; "
    "on a tie a and b get half of the gradient each (as PyTorch's maximum). Second derivatives 0 "
    "everywhere, ties included.",
)

min_ = formula_op(
    "min",
    2,
    value=lambda m, a, b: m.minimum(a, b),
    grads=lambda m, g, y, a, b: _extremum_grads(m, g, a <= b, b <= a, a, b),
    second=_extremum_second,
    doc="The smaller of a and b. Defined everywhere; d/da = 1 where a < b, 0 where a > b; "
    "on a tie a and b get half of the gradient each (as PyTorch's minimum). Second derivatives 0 "
    "everywhere, ties included.",
)
