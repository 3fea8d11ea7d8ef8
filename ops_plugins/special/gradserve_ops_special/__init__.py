"""gradserve-ops-special: erf, gelu and logaddexp, an example third-party op plugin.

It depends only on gradserve-ops-core (for ``Op``) and NumPy, and is installed separately:
``pip install ops_plugins/special`` adds its ops to a server's next start.

NumPy has no erf, and this plugin does not pull in SciPy for one: ``erf`` and ``erfc`` apply
the C library's ``math.erf``/``math.erfc`` element by element (correctly rounded or within
an ulp or two on glibc, and NaN and the infinities handled) at the cost of a Python call per
element, about 8 million elements a second on one core (measured). The same functions on one
float are their scalar forwards, which the engine uses for chains with one row of values,
and erf's derivative on floats is its scalar backward, for small graphs evaluated on floats.
GELU has no scalar backward: its derivative cancels to 0 near x = -0.75, where the ulp by
which ``math.exp`` and ``np.exp`` may differ becomes dozens, more than ``gradcheck`` allows.
``logaddexp`` has neither, so graphs using it run on arrays, as for any op without them.
"""

import math

import numpy as np

from gradserve.ops import Op

_SQRT_2 = math.sqrt(2.0)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_ONE_OVER_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_erf_elementwise = np.frompyfunc(math.erf, 1, 1)
_erfc_elementwise = np.frompyfunc(math.erfc, 1, 1)


def _erf(x):
    return _erf_elementwise(x).astype(np.float64)


def _erf_backward(g, y, x):
    return (g * _TWO_OVER_SQRT_PI * np.exp(-np.square(x)),)


def _erf_scalar_backward(g, y, x):
    return (g * _TWO_OVER_SQRT_PI * math.exp(-(x * x)),)


def _erf_second(y, x):
    return (-2.0 * x * _TWO_OVER_SQRT_PI * np.exp(-np.square(x)),)


erf = Op(
    "erf",
    1,
    forward=_erf,
    scalar=math.erf,
    backward=_erf_backward,
    scalar_backward=_erf_scalar_backward,
    second=_erf_second,
    doc="The error function, 2/sqrt(pi) times the integral of e^-t^2 from 0 to x, as the C "
    "library's erf (accurate to an ulp or two). Defined everywhere; "
    "d/dx = 2/sqrt(pi) e^-x^2, d2/dx2 = -2x d/dx.",
)


def _normal_cdf(x):
    # erfc(-x/sqrt 2)/2 rather than (1 + erf(x/sqrt 2))/2, which cancels to 0 for x < -8.
    return 0.5 * _erfc_elementwise(-x / _SQRT_2).astype(np.float64)


def _gelu(x):
    return x * _normal_cdf(x)


def _gelu_scalar(x):
    return x * (0.5 * math.erfc(-x / _SQRT_2))  # the operations of _gelu, on one float


def _gelu_backward(g, y, x):
    return (g * (_normal_cdf(x) + x * _ONE_OVER_SQRT_2PI * np.exp(-0.5 * np.square(x))),)


def _gelu_second(y, x):
    # d/dx (Phi(x) + x phi(x)) = 2 phi(x) + x phi'(x) = phi(x) (2 - x^2).
    return (_ONE_OVER_SQRT_2PI * np.exp(-0.5 * np.square(x)) * (2.0 - np.square(x)),)


gelu = Op(
    "gelu",
    1,
    forward=_gelu,
    scalar=_gelu_scalar,
    backward=_gelu_backward,
    second=_gelu_second,
    doc="The exact GELU, x Phi(x) with Phi the standard normal CDF (not the tanh "
    "approximation), accurate for large negative x. Defined everywhere; "
    "d/dx = Phi(x) + x phi(x), phi the standard normal density; d2/dx2 = phi(x) (2 - x^2).",
)


def _logaddexp_backward(g, y, a, b):
    # e^(a - y) and e^(b - y) never overflow: y >= max(a, b).
    return g * np.exp(a - y), g * np.exp(b - y)


def _logaddexp_second(y, a, b):
    # With softmax weights wa + wb = 1: d2/da2 = d2/db2 = wa wb, d2/da db = -wa wb.
    both = np.exp(a - y) * np.exp(b - y)
    return both, -both, both


logaddexp = Op(
    "logaddexp",
    2,
    forward=np.logaddexp,
    backward=_logaddexp_backward,
    second=_logaddexp_second,
    doc="log(e^a + e^b), computed without overflow (NumPy's logaddexp). Defined "
    "everywhere; d/da = e^(a - y), d/db = e^(b - y), with y the result (the softmax "
    "weights of a and b); d2/da2 = d2/db2 = -d2/da db = e^(a - y) e^(b - y).",
)
