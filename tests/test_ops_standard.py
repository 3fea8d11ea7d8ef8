"""The standard ops against closed forms, at ordinary points and where naive forms fail."""

import math

import numpy as np
import pytest
from graphs import GraphBuilder

from gradserve.ops.gradcheck import SCALAR_ULPS
from gradserve.v1 import gradserve_pb2 as pb

X = 0.7  # an ordinary point inside every unary op's domain
A, B = 1.3, -0.4  # and for the binary ops


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# name -> (inputs, value, local derivatives), the closed forms written with the math module.
CLOSED_FORMS = {
    "add": ((A, B), A + B, (1.0, 1.0)),
    "sub": ((A, B), A - B, (1.0, -1.0)),
    "mul": ((A, B), A * B, (B, A)),
    "div": ((A, B), A / B, (1 / B, -A / B**2)),
    "neg": ((X,), -X, (-1.0,)),
    "sum": ((A, B, X), A + B + X, (1.0, 1.0, 1.0)),
    "pow": ((A, B), A**B, (B * A ** (B - 1), A**B * math.log(A))),
    "exp": ((X,), math.exp(X), (math.exp(X),)),
    "log": ((X,), math.log(X), (1 / X,)),
    "sqrt": ((X,), math.sqrt(X), (0.5 / math.sqrt(X),)),
    "tanh": ((X,), math.tanh(X), (1 - math.tanh(X) ** 2,)),
    "sigmoid": ((X,), sigmoid(X), (sigmoid(X) * (1 - sigmoid(X)),)),
    "softplus": ((X,), math.log(1 + math.exp(X)), (sigmoid(X),)),
    "relu": ((X,), X, (1.0,)),
    "abs": ((-X,), X, (-1.0,)),
    "sin": ((X,), math.sin(X), (math.cos(X),)),
    "cos": ((X,), math.cos(X), (-math.sin(X),)),
    "max": ((A, B), A, (1.0, 0.0)),
    "min": ((A, B), B, (0.0, 1.0)),
}


def apply(op, *xs: float, g: float = 1.0):
    """Forward and backward of ``op`` at one point, as Python floats."""
    arrays = [np.array([x]) for x in xs]
    with np.errstate(all="ignore"):  # as the engine calls ops: IEEE inf and NaN, silently
        y = op.forward(*arrays)
        grads = op.backward(np.array([g]), y, *arrays)
    return float(y[0]), [float(d[0]) for d in grads]


def test_every_standard_op_has_a_closed_form_here(registry):
    core = {name for name, op in registry.items() if op.distribution == "gradserve-ops-core"}
    assert core == set(CLOSED_FORMS)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_value_and_gradient_match_the_closed_form(ops, name):
    xs, value, derivatives = CLOSED_FORMS[name]
    y, grads = apply(ops[name], *xs, g=-2.5)  # an upstream gradient other than 1
    assert y == pytest.approx(value, rel=1e-14)
    assert grads == pytest.approx([-2.5 * d for d in derivatives], rel=1e-12)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_doc_states_domain_and_derivative(ops, name):
    doc = ops[name].doc
    assert "Domain:" in doc or "Defined everywhere" in doc
    assert "d/d" in doc


@pytest.mark.parametrize(
    ("name", "x", "value", "derivative"),
    [
        # at the kinks: the documented conventions
        ("relu", 0.0, 0.0, 0.0),
        ("abs", 0.0, 0.0, 0.0),
        # naive forms overflow, or round the derivative to 0, out here
        ("sigmoid", -800.0, 0.0, 0.0),
        ("sigmoid", 40.0, 1.0, math.exp(-40.0)),
        ("sigmoid", -40.0, math.exp(-40.0), math.exp(-40.0)),
        ("softplus", 800.0, 800.0, 1.0),
        ("softplus", -800.0, 0.0, 0.0),
        ("softplus", -40.0, math.exp(-40.0), math.exp(-40.0)),
        ("tanh", 30.0, 1.0, 4 * math.exp(-60.0)),
        ("tanh", -800.0, -1.0, 0.0),
        ("exp", -800.0, 0.0, 0.0),
    ],
)
def test_edges(ops, name, x, value, derivative):
    y, (d,) = apply(ops[name], x)
    assert y == pytest.approx(value, rel=1e-12, abs=0.0)
    assert d == pytest.approx(derivative, rel=1e-9, abs=0.0)


@pytest.mark.parametrize("name", ["max", "min"])
def test_ties_split_the_gradient_evenly(ops, name):
    y, grads = apply(ops[name], 1.5, 1.5, g=3.0)
    assert (y, grads) == (1.5, [1.5, 1.5])


def test_pow_of_a_negative_base_with_an_integer_exponent(ops):
    # micrograd's (-3)**3: real result, and no NaN from the exponent's gradient.
    y, (dx, dp) = apply(ops["pow"], -3.0, 3.0)
    assert (y, dx, dp) == (-27.0, 27.0, 0.0)


def test_pow_at_zero(ops):
    assert apply(ops["pow"], 0.0, 0.0) == (1.0, [0.0, 0.0])
    assert apply(ops["pow"], 0.0, 2.0) == (0.0, [0.0, 0.0])


@pytest.mark.parametrize(
    ("name", "xs"),
    [("pow", (-8.0, 1 / 3)), ("pow", (0.0, -1.0)), ("log", (0.0,)), ("sqrt", (-1.0,)),
     ("div", (1.0, 0.0))],
)  # fmt: skip
def test_outside_the_domain(ops, name, xs):
    assert not ops[name].domain(*(np.array([x]) for x in xs)).any()


def test_done_when_expression_on_the_server(stub):
    # micrograd's README example: a=-4, b=2; c=a+b; d=a*b+b**3; c+=c+1; c+=1+c+(-a);
    # d+=d*2+(b+a).relu(); d+=3*d+(b-a).relu(); e=c-d; f=e**2; g=f/2; g+=10/f
    gb = GraphBuilder()
    a, b = gb.leaf(-4.0, "a"), gb.leaf(2.0, "b")
    one, two, three, ten = (gb.leaf(v) for v in (1.0, 2.0, 3.0, 10.0))
    c = gb.op("add", a, b)
    d = gb.op("add", gb.op("mul", a, b), gb.op("pow", b, three))
    c = gb.op("add", c, gb.op("add", c, one))
    c = gb.op("add", c, gb.op("add", gb.op("add", one, c), gb.op("neg", a)))
    d = gb.op("add", d, gb.op("add", gb.op("mul", d, two), gb.op("relu", gb.op("add", b, a))))
    d = gb.op("add", d, gb.op("add", gb.op("mul", three, d), gb.op("relu", gb.op("sub", b, a))))
    e = gb.op("sub", c, d)
    f = gb.op("pow", e, two)
    g = gb.op("div", f, two)
    g = gb.op("add", g, gb.op("div", ten, f))
    reply = stub.Evaluate(pb.EvaluateRequest(graph=gb.proto(), nodes=[g, a, b]))
    assert reply.values[0] == pytest.approx(24.70408163265306, rel=1e-9)
    assert reply.grads[1] == pytest.approx(138.83381924198252, rel=1e-9)
    assert reply.grads[2] == pytest.approx(645.5772594752186, rel=1e-9)


# The scalar forwards (math and operators on Python floats, for chains run one node at a
# time) against the array forwards. These give the same IEEE operation for arithmetic, so
# exactly the same value; the C library's functions and NumPy's may round differently.
EXACT = {"add", "sub", "mul", "div", "neg", "sum", "abs", "relu", "max", "min", "sqrt"}
SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, -3.0, math.pi, 20.0, -20.0, 40.0, 709.8, 710.0, -746.0]
SPECIAL += [1e16, 1e308, -1e308, 5e-324, -5e-324, 1e-300, math.inf, -math.inf, math.nan]


def scalar_test_points(arity: int, rng) -> list[np.ndarray]:
    """Ordinary, huge, tiny, integer and special values: every pair of them for two inputs."""
    n = 800 if arity == 1 else 200
    pool = np.concatenate(
        [
            SPECIAL,
            rng.normal(0.0, 2.0, n // 2),
            rng.normal(0.0, 300.0, n // 8),
            np.round(rng.normal(0.0, 5.0, n // 8)),
            rng.choice([-1.0, 1.0], n // 4) * np.exp(rng.uniform(-700.0, 700.0, n // 4)),
        ]
    )
    if arity == 1:
        return [pool]
    return [np.repeat(pool, len(pool)), np.tile(pool, len(pool))]


def test_every_standard_op_has_a_scalar_forward(ops):
    assert all(ops[name].scalar is not None for name in CLOSED_FORMS)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_scalar_forward_agrees_with_the_array_forward(ops, name):
    op = ops[name]
    xs = scalar_test_points(op.arity or 2, np.random.default_rng(5))
    with np.errstate(all="ignore"):
        expected = op.forward(*xs).tolist()
    ulps = 0 if name in EXACT else SCALAR_ULPS
    for point, want in zip(np.stack(xs, axis=1).tolist(), expected, strict=True):
        try:
            got = op.scalar(*point)
        except (ArithmeticError, ValueError):
            # The engine then uses the array forward; math raises only where IEEE gives
            # inf or NaN (or where the domain excludes the point).
            inside = op.domain is None or op.domain(*(np.array([x]) for x in point))[0]
            assert not math.isfinite(want) or not inside, (point, want)
            continue
        assert type(got) is float, point
        if math.isnan(want) or math.isnan(got):
            assert math.isnan(want) and math.isnan(got), (point, got, want)
        elif ulps == 0 or math.isinf(want):
            assert (got, math.copysign(1, got)) == (want, math.copysign(1, want)), point
        else:
            assert abs(got - want) <= ulps * math.ulp(max(abs(got), abs(want))), (point, got)
