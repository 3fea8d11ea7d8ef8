"""Values built with micrograd's operators, differentiated by a real server.

Every expression is written once as a Python function of its inputs, so the same code runs
on plain floats: that gives the independent oracle for values, and a five-point central
difference of it gives the oracle for gradients (error O(h^4), about 1e-13 here).
"""

import math
import weakref
from fractions import Fraction

import numpy as np
import pytest

from gradserve.client import Client, Value

REL = 1e-9


@pytest.fixture(scope="module")
def client(target):
    with Client(target) as client:
        yield client


def relu(x):
    return x.relu() if isinstance(x, Value) else max(x, 0.0)


def tanh(x):
    return x.tanh() if isinstance(x, Value) else math.tanh(x)


def derivative(f, args, i, h=1e-4):
    """df/dargs[i] by the five-point central difference."""

    def at(delta):
        shifted = list(args)
        shifted[i] += delta
        return f(*shifted)

    return (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)


def classic(a, b):
    """micrograd's README expression: numbers on both sides, reused intermediates."""
    c = a + b
    d = a * b + b**3
    c += c + 1
    c += 1 + c + (-a)
    d += d * 2 + relu(b + a)
    d += 3 * d + relu(b - a)
    e = c - d
    f = e**2
    g = f / 2.0
    g += 10.0 / f
    return g


def rational(x, y):
    return (x * x - 3 / y) / (2 - x) + y**-2 - (-x) * 4.5


def neuron_layer(x1, x2, w1, w2, b):
    h = tanh(x1 * w1 + x2 * w2 + b)
    return tanh(h * w2 - relu(h - 0.25) * 3) / (1 + h * h)


EXPRESSIONS = [
    (classic, [-4.0, 2.0]),
    (rational, [0.7, 1.3]),
    (rational, [-2.5, -0.8]),
    (neuron_layer, [0.5, -1.5, 0.8, -0.3, 0.1]),
]


def _backward(client, f, args):
    leaves = [Value(x, label=f"x{i}") for i, x in enumerate(args)]
    out = f(*leaves)
    out.backward(client)
    return leaves, out


def test_the_micrograd_readme_example(client):
    leaves, g = _backward(client, classic, [-4.0, 2.0])
    assert g.data == pytest.approx(24.70408163265306, rel=REL)
    assert leaves[0].grad == pytest.approx(138.83381924198252, rel=REL)
    assert leaves[1].grad == pytest.approx(645.5772594752186, rel=REL)


@pytest.mark.parametrize(("f", "args"), EXPRESSIONS, ids=lambda p: getattr(p, "__name__", ""))
def test_values_and_gradients_match_the_oracle(client, f, args):
    leaves, out = _backward(client, f, args)
    assert out.data == pytest.approx(f(*args), rel=REL)
    for i, leaf in enumerate(leaves):
        assert leaf.data == args[i]
        assert leaf.grad == pytest.approx(derivative(f, args, i), rel=REL, abs=1e-12), i


def test_the_notebook_first_example(client):
    a, b = Value(5.0, "a"), Value(3.0, "b")
    c = a + b
    d = Value(10.0, "d")
    e = c * d
    e.backward(client)
    assert (e.data, c.data) == (80.0, 8.0)
    assert (a.grad, b.grad, c.grad, d.grad, e.grad) == (10.0, 10.0, 10.0, 8.0, 1.0)


def test_the_notebook_neuron(client):
    x1, x2 = Value(2.0, "x1"), Value(0.0, "x2")
    w1, w2 = Value(-3.0, "w1"), Value(1.0, "w2")
    b = Value(6.8813735870195432, "b")
    n = x1 * w1 + x2 * w2 + b
    o = n.tanh()
    o.backward(client)
    assert o.data == pytest.approx(math.sqrt(0.5), rel=REL)
    dn = 1 - math.tanh(n.data) ** 2  # closed form: d tanh(n)/dn
    assert n.grad == pytest.approx(dn, rel=REL)
    for leaf, closed_form in [(x1, dn * -3.0), (w1, dn * 2.0), (x2, dn * 1.0), (b, dn)]:
        assert leaf.grad == pytest.approx(closed_form, rel=REL), leaf.label
    assert w2.grad == 0.0  # x2 is 0


def test_a_repeated_input_counts_twice(client):
    x = Value(3.0)
    y = x * x
    y.backward(client)
    assert (y.data, x.grad) == (9.0, 6.0)


def test_unary_ops_match_closed_forms(client):
    x = Value(0.4)
    outs = [x.exp(), x.log(), x.sigmoid(), x.tanh(), (-x).relu(), x.apply("sin")]
    total = outs[0]
    for out in outs[1:]:
        total = total + out
    total.backward(client)
    s = 1 / (1 + math.exp(-0.4))
    expected = [math.exp(0.4), math.log(0.4), s, math.tanh(0.4), 0.0, math.sin(0.4)]
    for out, value in zip(outs, expected, strict=True):
        assert out.data == pytest.approx(value, rel=REL)
    closed_form = math.exp(0.4) + 1 / 0.4 + s * (1 - s) + 1 - math.tanh(0.4) ** 2 + math.cos(0.4)
    assert x.grad == pytest.approx(closed_form, rel=REL)


def test_a_value_exponent_gets_its_gradient(client):
    x, p = Value(1.7), Value(2.3)
    y = x**p
    z = 2**x
    (y + z).backward(client)
    assert x.grad == pytest.approx(2.3 * 1.7**1.3 + 2**1.7 * math.log(2), rel=REL)
    assert p.grad == pytest.approx(1.7**2.3 * math.log(1.7), rel=REL)


def test_one_op_read_by_nodes_of_different_input_counts(client):
    x, y, z = Value(1.5), Value(-2.0), Value(0.25)
    two, three = x.apply("sum", y), x.apply("sum", y, z)
    (two * three).backward(client)
    # d/dx (x+y)(x+y+z) = (x+y+z) + (x+y); d/dz = x+y
    assert (two.data, three.data) == (-0.5, -0.25)
    assert x.grad == pytest.approx(-0.25 + -0.5, rel=REL)
    assert z.grad == pytest.approx(-0.5, rel=REL)


def test_a_dropped_intermediate_is_freed_at_once():
    x = Value(2.0)
    kept = x * 3
    dropped = weakref.ref(kept + 1)  # the new Value is not held by anyone
    assert dropped() is None
    assert kept._tape is not None


def test_gradients_are_fresh_on_each_backward(client):
    x = Value(2.0)
    y = x * 3
    y.backward(client)
    y.backward(client)
    assert x.grad == 3.0  # not 6: nothing accumulates across calls


def test_a_leaf_whose_data_is_not_a_number_is_refused_before_sending(client):
    x = Value(1.0)
    y = x * 2
    x.data = "oops"
    with pytest.raises(TypeError, match="must be a real number, got 'oops'"):
        y.backward(client)


def test_operators_reject_what_is_not_a_number():
    x = Value(1.0)
    with pytest.raises(TypeError):
        x + "1"
    with pytest.raises(TypeError):
        x.apply("add", None)
    with pytest.raises(TypeError):
        Value("1")


@pytest.mark.parametrize("number", [np.float64(0.5), Fraction(1, 2), True], ids=repr)
def test_any_real_number_becomes_a_constant(client, number):
    """Not only float and int: NumPy's floats, fractions and bools are numbers.Real too."""
    x = Value(3.0)
    y = x * number
    y.backward(client)
    assert y.data == 3.0 * float(number) and x.grad == float(number)


def test_prev_gives_the_program_s_own_values_and_one_object_for_a_dropped_one():
    x = Value(1.0)
    y = x * 2.0
    z = y + x
    assert z._prev[0] is y and z._prev[1] is x
    w = (x * 3.0).tanh()  # the product's Value is dropped at once
    made = w._prev[0]
    assert made is w._prev[0] and made._op == "*" and made._prev[0] is x


def test_the_labels_sent_are_the_values_labels_in_node_order():
    x = Value(2.0, "x")
    y = x * 3.0
    y.label = "y"
    z = y + 1.0  # nodes: x, the constant 3, y, the constant 1, z
    assert z._tape.subgraph([z._id]).labels() == ["x", "", "y", "", ""]
    w = Value(1.0) * 2.0
    assert w._tape.subgraph([w._id]).labels() == []  # none labelled: none sent
