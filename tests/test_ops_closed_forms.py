"""Every standard op against its closed form at many points (large, tiny, negative, near the
domain's edges), in 60-digit decimals: an oracle that shares nothing with the ops' code, nor
with libm (``gradcheck`` only checks an op's backward against finite differences of its own
forward, so an op whose forward and backward are wrong alike would pass it).

Each op's array forward and backward, and its scalar forward and backward on floats, must
agree with the decimal value to a few ulps (relative 1e-14), or be within 1e-300 of it where
the true value is below the doubles' range.
"""

import math
from decimal import Decimal, localcontext

import numpy as np
import pytest

DIGITS = 60
PI = Decimal("3.141592653589793238462643383279502884197169399375105820974944592307816")
REL = 1e-14
ABS = 1e-300


def D(x: float) -> Decimal:
    return Decimal(x)  # exact: every double is a finite decimal


def exp(x: Decimal) -> Decimal:
    return x.exp()


def ln(x: Decimal) -> Decimal:
    return x.ln()


def sin(x: Decimal) -> Decimal:
    """The Taylor series after reducing x to [-pi, pi] with 70 digits of pi."""
    x = x - 2 * PI * (x / (2 * PI)).to_integral_value()
    term, total, n = x, x, 1
    while abs(term) > Decimal(10) ** -(DIGITS + 5):
        term = -term * x * x / ((n + 1) * (n + 2))
        total += term
        n += 2
    return total


def cos(x: Decimal) -> Decimal:
    return sin(x + PI / 2)


def cosh(x: Decimal) -> Decimal:
    return (exp(x) + exp(-x)) / 2


def tanh(x: Decimal) -> Decimal:
    if x < 0:
        return -tanh(-x)
    e = exp(-2 * x)
    return (1 - e) / (1 + e)


def sigmoid(x: Decimal) -> Decimal:
    return 1 / (1 + exp(-x))


# name -> (points, value(*xs), derivatives(*xs)) on Decimals. Points sit inside the domain
# and off the kinks (ties and zeros are tested in test_ops_standard.py).
LARGE, TINY = 1e300, 1e-300
UNARY_EVERYWHERE = [-1e3, -37.5, -20.0, -3.0, -1.0, -0.5, -1e-8, -TINY, TINY, 1e-8, 0.25, 1.0]
UNARY_EVERYWHERE += [2.5, 19.0, 36.0, 300.0, 1e3]
PAIRS = [(1.5, -2.25), (-3.0, 7.0), (1e-200, 3e-150), (-1e150, 2e140), (LARGE, -0.5)]
PAIRS += [(0.1, 0.2), (-7.25, -7.5), (123456.789, 1e-5)]

CASES = {
    "add": (PAIRS, lambda a, b: a + b, lambda a, b: (1, 1)),
    "sub": (PAIRS, lambda a, b: a - b, lambda a, b: (1, -1)),
    "mul": (PAIRS[:4] + PAIRS[5:], lambda a, b: a * b, lambda a, b: (b, a)),
    "div": (
        [(a, b) for a, b in PAIRS if abs(b) > 1e-10 and abs(a / b) < 1e150],
        lambda a, b: a / b,
        lambda a, b: (1 / b, -a / (b * b)),
    ),
    "neg": ([(x,) for x in [*UNARY_EVERYWHERE, LARGE]], lambda x: -x, lambda x: (-1,)),
    "sum": (
        [(1.5,), (1.0, 2.0, 3.0, 4.0, 5.0), (1e-300, 2e-300), (-4.5, 1e10, 3.0)],
        lambda *xs: sum(xs, Decimal(0)),
        lambda *xs: (1,) * len(xs),
    ),
    "pow": (
        [
            (2.0, 10.0),
            (0.5, -3.5),
            (7.0, 0.5),
            (1e-10, 2.0),
            (10000000000.0, -1.5),
            (3.7, 1e-08),
            (-2.0, 3.0),
            (-1.5, -2.0),
            (-10.0, 4.0),
            (-1e-300, -2.0),  # overflows to inf: d/dp must stay 0, not inf * 0
            (-0.5, 3.0),  # a negative base above -1: d/dp is 0, log is never taken
        ],
        lambda x, p: _pow(x, p),
        lambda x, p: (p * _pow(x, p - 1), _pow(x, p) * ln(x) if x > 0 else Decimal(0)),
    ),
    "exp": (
        [(x,) for x in [-745.0, -700.0, -50.0, -1.0, -1e-9, 0.0, 1e-9, 0.5, 30.0, 700.0]],
        exp,
        lambda x: (exp(x),),
    ),
    "log": (
        [(x,) for x in [5e-324, 1e-300, 1e-8, 0.1, 0.999999, 1.0, 1.000001, 2.0, 1e8, 1e300]],
        ln,
        lambda x: (1 / x,),
    ),
    "sqrt": (
        [(x,) for x in [5e-324, 1e-300, 1e-8, 0.25, 2.0, 1e8, 1e300]],
        lambda x: x.sqrt(),
        lambda x: (1 / (2 * x.sqrt()),),
    ),
    "tanh": (
        [(x,) for x in UNARY_EVERYWHERE],
        tanh,
        lambda x: (1 / cosh(x) ** 2,),
    ),
    "sigmoid": (
        [(x,) for x in UNARY_EVERYWHERE],
        sigmoid,
        lambda x: (sigmoid(x) * sigmoid(-x),),
    ),
    "softplus": (
        [(x,) for x in UNARY_EVERYWHERE],
        lambda x: ln(1 + exp(x)),
        lambda x: (sigmoid(x),),
    ),
    "relu": (
        [(x,) for x in [*UNARY_EVERYWHERE, LARGE]],
        lambda x: max(x, Decimal(0)),
        lambda x: (1 if x > 0 else 0,),
    ),
    "abs": (
        [(x,) for x in [*UNARY_EVERYWHERE, -LARGE]],
        abs,
        lambda x: (1 if x > 0 else -1,),
    ),
    "sin": (
        [(x,) for x in [*UNARY_EVERYWHERE, 10000000000.0, -12345.678]],
        sin,
        lambda x: (cos(x),),
    ),
    "cos": (
        [(x,) for x in [*UNARY_EVERYWHERE, 10000000000.0, -12345.678]],
        cos,
        lambda x: (-sin(x),),
    ),
    "max": (
        [*PAIRS, (-0.5, -0.25), (1e-300, 2e-300)],
        max,
        lambda a, b: (1, 0) if a > b else (0, 1),
    ),
    "min": (
        [*PAIRS, (-0.5, -0.25), (1e-300, 2e-300)],
        min,
        lambda a, b: (1, 0) if a < b else (0, 1),
    ),
}


def _pow(x: Decimal, p: Decimal) -> Decimal:
    """x^p: exp(p ln x) for x > 0; for x < 0 the exponent is an integer (sign by parity)."""
    if x > 0:
        return exp(p * ln(x))
    magnitude = exp(p * ln(-x))
    return -magnitude if int(p) % 2 else magnitude


def exact(name: str, xs: tuple[float, ...]) -> list[Decimal]:
    """The value and the derivatives at ``xs``, in decimals."""
    _, value, derivatives = CASES[name]
    with localcontext() as context:
        context.prec = DIGITS
        context.Emin, context.Emax = -99999, 99999
        args = [D(x) for x in xs]
        return [value(*args), *(Decimal(d) for d in derivatives(*args))]


def oracle(name: str, xs: tuple[float, ...]) -> tuple[float, list[float]]:
    value, *derivatives = map(float, exact(name, xs))
    return value, derivatives


def representable(name: str, xs: tuple[float, ...]) -> bool:
    """Whether the value and the derivatives are 0 or normal doubles (no overflow or
    underflow on the way to them)."""
    return all(d == 0 or Decimal("1e-307") < abs(d) < Decimal("1e308") for d in exact(name, xs))


def close(got: float, expected: float) -> bool:
    return math.isclose(got, expected, rel_tol=REL, abs_tol=ABS)


POINTS = [(name, xs) for name, (points, _, _) in sorted(CASES.items()) for xs in points]


def test_every_standard_op_is_in_the_table(registry):
    core = {n for n, loaded in registry.items() if loaded.distribution == "gradserve-ops-core"}
    assert set(CASES) == core
    assert all(len(CASES[name][0]) >= 4 for name in CASES)


@pytest.mark.parametrize(("name", "xs"), POINTS, ids=[f"{n}{xs}" for n, xs in POINTS])
def test_the_array_forward_and_backward_match_the_closed_form(ops, name, xs):
    value, derivatives = oracle(name, xs)
    op = ops[name]
    arrays = [np.array([x]) for x in xs]
    with np.errstate(all="ignore"):
        y = op.forward(*arrays)
        grads = op.backward(np.array([1.0]), y, *arrays)
    assert close(float(y[0]), value), (float(y[0]), value)
    got = [float(np.asarray(g).reshape(-1)[0]) for g in grads]
    assert all(map(close, got, derivatives)), (got, derivatives)
    # The backward scales by the incoming gradient (the chain rule), not just adds it.
    with np.errstate(all="ignore"):
        scaled = op.backward(np.array([-2.5]), y, *arrays)
    for g, d in zip(scaled, derivatives, strict=True):
        assert close(float(np.asarray(g).reshape(-1)[0]), -2.5 * d)


@pytest.mark.parametrize(("name", "xs"), POINTS, ids=[f"{n}{xs}" for n, xs in POINTS])
def test_the_scalar_forward_and_backward_match_the_closed_form(ops, name, xs):
    """A scalar function may raise only where a result overflows or underflows (there the
    engine falls back to the array function, as for math.exp(1000))."""
    op = ops[name]
    value, derivatives = oracle(name, xs)
    inside_doubles = representable(name, xs)
    if op.scalar is not None:
        try:
            assert close(op.scalar(*xs), value), (op.scalar(*xs), value)
        except (ArithmeticError, ValueError):
            assert not inside_doubles, "the scalar forward raised where the value is finite"
    if op.scalar_backward is not None:
        with np.errstate(all="ignore"):
            y = float(op.forward(*[np.array([x]) for x in xs])[0])
        try:
            got = op.scalar_backward(1.0, y, *xs)
        except (ArithmeticError, ValueError):
            assert not inside_doubles, "the scalar backward raised where the gradient is finite"
            return
        assert all(map(close, got, derivatives)), (got, derivatives)
        scaled = op.scalar_backward(-2.5, y, *xs)
        assert all(map(close, scaled, [-2.5 * d for d in derivatives])), (scaled, derivatives)


def test_the_oracle_knows_some_values_by_heart():
    """The decimal functions themselves, at points whose values are known exactly or are in
    tables: an oracle with a bug would make every test above meaningless."""
    with localcontext() as context:
        context.prec = DIGITS
        assert abs(sin(PI / 6) - Decimal("0.5")) < Decimal("1e-35")
        assert abs(cos(PI / 3) - Decimal("0.5")) < Decimal("1e-35")
        assert abs(sin(D(1e10)) - D(math.sin(1e10))) < Decimal("1e-16")  # libm reduces exactly
        assert abs(tanh(Decimal(1)) - Decimal("0.7615941559557648881194582826")) < Decimal("1e-25")
        assert abs(sigmoid(Decimal(0)) - Decimal("0.5")) == 0
        assert abs(_pow(Decimal(-2), Decimal(3)) + 8) < Decimal("1e-35")


# name -> (inside, outside): points of the real-valued domain each op documents, from the
# mathematics (a zero divisor; log of x <= 0; sqrt of x < 0; x^p with x < 0 and p not an
# integer, or x = 0 and p < 0), and the ops defined everywhere have no domain at all.
DOMAINS = {
    "div": (
        [(1.0, 2.0), (0.0, -3.0), (-1.0, 1e-300), (5.0, -1e300)],
        [(1.0, 0.0), (-2.0, 0.0), (0.0, -0.0)],
    ),
    "log": ([(1e-300,), (0.5,), (1.0,), (1e300,)], [(0.0,), (-0.0,), (-1e-300,), (-2.0,)]),
    "sqrt": ([(0.0,), (-0.0,), (1e-300,), (4.0,)], [(-1e-300,), (-1.0,), (-1e300,)]),
    "pow": (
        [
            (2.0, 0.5),
            (0.5, -3.0),
            (0.0, 0.0),
            (0.0, 2.5),
            (-2.0, 3.0),
            (-0.5, -2.0),
            (-3.0, 0.0),
            (1e-300, -1.0),
            (2.0, -0.5),
            (-1.5, 1e20),
        ],
        [
            (-2.0, 0.5),
            (-0.5, -1.5),
            (0.0, -1.0),
            (0.0, -0.5),
            (-1e-300, 0.25),
            (-1.0, 2.0001),
            (-2.0, 2.75),  # non-integers above and below the integer nearest them
            (-1.0, -0.4),
            (-3.0, 1e-09),
        ],
    ),
}


def test_every_op_with_a_domain_is_in_the_table(ops):
    core = [name for name in CASES if ops[name].domain is not None]
    assert sorted(core) == sorted(DOMAINS)


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_the_domain_is_the_mathematical_one(ops, name):
    inside, outside = DOMAINS[name]
    domain = ops[name].domain
    for points, expected in ((inside, True), (outside, False)):
        columns = [np.array(column) for column in zip(*points, strict=True)]
        got = np.asarray(domain(*columns))
        assert got.dtype == bool and got.tolist() == [expected] * len(points), (points, got)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_doc_states_the_domain_the_op_checks(ops, name):
    """The doc says "Defined everywhere" exactly when the op has no domain, else names it."""
    op = ops[name]
    assert ("Defined everywhere" in op.doc) == (op.domain is None), op.doc
    assert ("Domain:" in op.doc) == (op.domain is not None), op.doc
