"""gradserve-ops-special: erf, gelu and logaddexp, an example third-party op plugin.

It depends only on gradserve-ops-core (for ``formula_op``) and NumPy, and is installed separately:
``pip install ops_plugins/special`` adds its ops to a server's next start.

NumPy has no erf, and this plugin does not pull in SciPy for one: ``erf`` and ``erfc`` apply
the C library's ``math.erf``/``math.erfc`` element by element (correctly rounded or within
an ulp or two on glibc, and NaN and the infinities handled) at the cost of a Python call per
element, about 8 million elements a second on one core (measured). Each op is written once,
as formulas (``gradserve.ops.formulas``), from which its array and float code come; erf and
erfc enter them as ``Elementwise`` functions with their array and float forms. GELU has no
float backward (``floats="forward"``): its derivative cancels to 0 near x = -0.75, where the
ulp by which ``math.exp`` and ``np.exp`` may differ becomes dozens, more than ``gradcheck``
allows. ``logaddexp`` calls NumPy's, which has no float form, so it has no float code and
graphs using it run on arrays, as for any op without it.
"""

import math

import numpy as np

from gradserve.ops.formulas import Elementwise, formula_op

_SQRT_2 = math.sqrt(2.0)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_ONE_OVER_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_erf_elementwise = np.frompyfunc(math.erf, 1, 1)
_erfc_elementwise = np.frompyfunc(math.erfc, 1, 1)

# The C library's erf and erfc, element by element on arrays, as themselves on floats.
_erf = Elementwise("erf", lambda x: _erf_elementwise(x).astype(np.float64), math.erf)
_erfc = Elementwise("erfc", lambda x: _erfc_elementwise(x).astype(np.float64), math.erfc)


def _erf_grads(m, g, y, x):
    return (g * _TWO_OVER_SQRT_PI * m.exp(-m.square(x)),)


erf = formula_op(
    "erf",
    1,
    value=lambda m, x: _erf(x),
    grads=_erf_grads,
    second=lambda m, y, x: _erf_grads(m, -2.0 * x, y, x),  # -2x d/dx
    doc="The error function, 2/sqrt(pi) times the integral of e^-t^2 from 0 to x, as the C "
    "library's erf (accurate to an ulp or two). Defined everywhere; "
    "d/dx = 2/sqrt(pi) e^-x^2, d2/dx2 = -2x d/dx.",
)


def _normal_cdf(m, x):
    # erfc(-x/sqrt 2)/2 rather than (1 + erf(x/sqrt 2))/2, which cancels to 0 for x < -8.
    return 0.5 * _erfc(-x / _SQRT_2)


def _gaussian(m, x):
    return m.exp(-0.5 * m.square(x))  # the standard normal density times sqrt(2 pi)


gelu = formula_op(
    "gelu",
    1,
    value=lambda m, x: x * _normal_cdf(m, x),
    grads=lambda m, g, y, x: (g * (_normal_cdf(m, x) + x * _ONE_OVER_SQRT_2PI * _gaussian(m, x)),),
    # d/dx (Phi(x) + x phi(x)) = 2 phi(x) + x phi'(x) = phi(x) (2 - x^2).
    second=lambda m, y, x: (_ONE_OVER_SQRT_2PI * _gaussian(m, x) * (2.0 - m.square(x)),),
    floats="forward",
    doc="The exact GELU, x Phi(x) with Phi the standard normal CDF (not the tanh "
    "approximation), accurate for large negative x. Defined everywhere; "
    "d/dx = Phi(x) + x phi(x), phi the standard normal density; d2/dx2 = phi(x) (2 - x^2).",
)


def _logaddexp_grads(m, g, y, a, b):
    # e^(a - y) and e^(b - y) never overflow: y >= max(a, b).
    return g * m.exp(a - y), g * m.exp(b - y)


def _logaddexp_second(m, y, a, b):
    # With softmax weights wa + wb = 1: d2/da2 = d2/db2 = wa wb, d2/da db = -wa wb.
    wa, wb = _logaddexp_grads(m, 1.0, y, a, b)
    both = wa * wb
    return both, -both, both


logaddexp = formula_op(
    "logaddexp",
    2,
    value=lambda m, a, b: m.logaddexp(a, b),  # NumPy's; no float form, so no float code
    grads=_logaddexp_grads,
    second=_logaddexp_second,
    doc="log(e^a + e^b), computed without overflow (NumPy's logaddexp). Defined "
    "everywhere; d/da = e^(a - y), d/db = e^(b - y), with y the result (the softmax "
    "weights of a and b); d2/da2 = d2/db2 = -d2/da db = e^(a - y) e^(b - y).",
)
