"""Every op's second derivatives (``Op.second``) against closed forms written with the math
module, at many points; the kink conventions; and gradcheck catching wrong ones."""

import math
from pathlib import Path

import numpy as np
import pytest

from gradserve.ops import Op
from gradserve.ops.gradcheck import gradcheck


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def phi(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


# name -> (number of inputs, sampler of one point, closed-form upper-triangular Hessian)
CLOSED_FORMS = {
    "add": (2, None, lambda a, b: (0.0, 0.0, 0.0)),
    "sub": (2, None, lambda a, b: (0.0, 0.0, 0.0)),
    "neg": (1, None, lambda x: (0.0,)),
    "sum": (3, None, lambda a, b, c: (0.0,) * 6),
    "mul": (2, None, lambda a, b: (0.0, 1.0, 0.0)),
    "div": (2, "nonzero", lambda a, b: (0.0, -1 / b**2, 2 * a / b**3)),
    "pow": (
        2,
        "positive_base",
        lambda x, p: (
            p * (p - 1) * x ** (p - 2),
            x ** (p - 1) + p * x ** (p - 1) * math.log(x),
            x**p * math.log(x) ** 2,
        ),
    ),
    "exp": (1, None, lambda x: (math.exp(x),)),
    "log": (1, "positive", lambda x: (-1 / x**2,)),
    "sqrt": (1, "positive", lambda x: (-0.25 * x**-1.5,)),
    "tanh": (1, None, lambda x: (-2 * math.tanh(x) * (1 - math.tanh(x) ** 2),)),
    "sigmoid": (1, None, lambda x: (sigmoid(x) * (1 - sigmoid(x)) * (1 - 2 * sigmoid(x)),)),
    "softplus": (1, None, lambda x: (sigmoid(x) * (1 - sigmoid(x)),)),
    "relu": (1, None, lambda x: (0.0,)),
    "abs": (1, None, lambda x: (0.0,)),
    "sin": (1, None, lambda x: (-math.sin(x),)),
    "cos": (1, None, lambda x: (-math.cos(x),)),
    "max": (2, None, lambda a, b: (0.0, 0.0, 0.0)),
    "min": (2, None, lambda a, b: (0.0, 0.0, 0.0)),
}
SPECIAL_FORMS = {
    "erf": (1, None, lambda x: (-4 * x / math.sqrt(math.pi) * math.exp(-x * x),)),
    "gelu": (1, None, lambda x: (phi(x) * (2 - x * x),)),
    "logaddexp": (
        2,
        None,
        lambda a, b: (
            sigmoid(a - b) * sigmoid(b - a),
            -sigmoid(a - b) * sigmoid(b - a),
            sigmoid(a - b) * sigmoid(b - a),
        ),
    ),
}
POINTS = 50
SPECIAL = Path(__file__).resolve().parents[1] / "ops_plugins" / "special"


@pytest.fixture
def special(monkeypatch):
    """gradserve-ops-special imported from its source folder, without installing it."""
    monkeypatch.syspath_prepend(str(SPECIAL))
    import gradserve_ops_special

    return gradserve_ops_special


def sample(n_inputs: int, kind: str | None, rng: np.random.Generator) -> np.ndarray:
    """POINTS points (shape (n_inputs, POINTS)) inside the op's domain, off its kinks."""
    xs = rng.uniform(-4.0, 4.0, size=(n_inputs, POINTS))
    xs[np.abs(xs) < 0.05] += 0.2
    if kind == "positive":
        xs = np.abs(xs)
    elif kind == "positive_base":
        xs[0] = np.abs(xs[0]) * 0.5 + 0.1
    elif kind == "nonzero":
        xs[1] = np.where(np.abs(xs[1]) < 0.3, 0.5, xs[1])
    return xs


def second_of(op: Op, xs: np.ndarray) -> np.ndarray:
    """``op.second`` at the points, as an array (pairs, POINTS); zeros for ``()``."""
    k = len(xs)
    with np.errstate(all="ignore"):
        y = op.forward(*xs)
        result = op.second(y, *xs)
    if not result:
        return np.zeros((k * (k + 1) // 2, xs.shape[1]))
    return np.array(result)


def check_against(op: Op, forms: dict, seed: int) -> None:
    n_inputs, kind, closed = forms[op.name]
    xs = sample(n_inputs, kind, np.random.default_rng(seed))
    got = second_of(op, xs)
    want = np.array([closed(*point) for point in xs.T]).T
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-14)


def test_every_standard_op_has_second_derivatives(registry):
    core = {name for name, op in registry.items() if op.distribution == "gradserve-ops-core"}
    assert core == set(CLOSED_FORMS)
    assert all(registry[name].op.second is not None for name in core)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_second_derivatives_match_the_closed_form(ops, name):
    check_against(ops[name], CLOSED_FORMS, seed=sorted(CLOSED_FORMS).index(name))


def test_special_ops_second_derivatives_match_the_closed_form(special):
    for op in (special.erf, special.gelu, special.logaddexp):
        check_against(op, SPECIAL_FORMS, seed=7)
        result = gradcheck(op)
        assert result.ok and result.second_points > 100, str(result)


@pytest.mark.parametrize(
    ("name", "point"),
    [("relu", (0.0,)), ("abs", (0.0,)), ("max", (1.5, 1.5)), ("min", (-2.0, -2.0))],
)
def test_zero_at_the_kinks(ops, name, point):
    xs = np.array(point, dtype=float)[:, None]
    assert np.all(second_of(ops[name], xs) == 0.0)


def test_pow_conventions(ops):
    # x^2 at x = -3: d2/dx2 = 2; the derivatives through p are 0 where x <= 0, as d/dp.
    xs = np.array([[-3.0, 0.0, 2.0], [2.0, 2.0, 1.0]])
    dxx, dxp, dpp = second_of(ops["pow"], xs)
    assert list(dxx) == [2.0, 2.0, 0.0] and list(dxp[:2]) == [0.0, 0.0]
    assert list(dpp[:2]) == [0.0, 0.0] and dxp[2] == pytest.approx(1 + math.log(2.0))


def test_far_out_no_overflow_or_cancellation(ops):
    x = np.array([[-800.0, 800.0, 40.0]])
    (tanh2,) = second_of(ops["tanh"], x)
    (sig2,) = second_of(ops["sigmoid"], x)
    assert list(tanh2[:2]) == [0.0, 0.0] and np.all(np.isfinite(sig2))
    assert sig2[2] == pytest.approx(-math.exp(-40.0), rel=1e-9)  # s'(1 - 2s) ~ -e^-x


def test_every_loaded_op_checks_its_second_derivatives(registry):
    for loaded in registry.values():
        result = gradcheck(loaded.op)
        assert result.ok and result.second_points > 150, str(result)


def _sin_backward(g, y, x):
    return (g * np.cos(x),)


@pytest.mark.parametrize(
    ("second", "problem"),
    [
        (lambda y, x: (np.sin(x),), "second gives d2y/dx1dx1"),  # wrong sign
        (lambda y, x: (), "second gives d2y/dx1dx1"),  # not linear
        (lambda y, x: (-y, -y), "second must return 1 arrays"),
        (lambda y, x: (-y[:1],), "second returned"),
    ],
)
def test_wrong_second_derivatives_fail(second, problem):
    result = gradcheck(Op("s", 1, np.sin, _sin_backward, second=second))
    assert not result.ok and problem in result.problem


def test_wrong_mixed_derivative_fails():
    op = Op(
        "m",
        2,
        np.multiply,
        lambda g, y, a, b: (g * b, g * a),
        second=lambda y, a, b: (np.zeros_like(a), np.zeros_like(a), np.zeros_like(a)),
    )
    result = gradcheck(op)
    assert not result.ok and "d2y/dx1dx2" in result.problem
