"""What PyTorch users look for on a Value (issue 21, point 6): the standard ops as methods
with torch.Tensor's names, abs(x), float(x) and x.item(); each checked against its closed
form and derivative, evaluated on the server."""

import math

import pytest

import gradserve.client
from gradserve.client import Client, NoServerConfigured, Value, default

X, Y = 0.7, -1.3


def _sign(x):
    return math.copysign(1.0, x)


# name: (build from x and y, value, d/dx, d/dy), closed forms at (X, Y).
CASES = {
    "sin": (lambda x, y: x.sin(), math.sin(X), math.cos(X), 0.0),
    "cos": (lambda x, y: x.cos(), math.cos(X), -math.sin(X), 0.0),
    "sqrt": (lambda x, y: x.sqrt(), math.sqrt(X), 0.5 / math.sqrt(X), 0.0),
    "abs": (lambda x, y: y.abs(), abs(Y), 0.0, _sign(Y)),
    "abs()": (lambda x, y: abs(y), abs(Y), 0.0, _sign(Y)),
    "neg": (lambda x, y: x.neg(), -X, -1.0, 0.0),
    "exp": (lambda x, y: x.exp(), math.exp(X), math.exp(X), 0.0),
    "log": (lambda x, y: x.log(), math.log(X), 1 / X, 0.0),
    "tanh": (lambda x, y: y.tanh(), math.tanh(Y), 0.0, 1 - math.tanh(Y) ** 2),
    "sigmoid": (
        lambda x, y: x.sigmoid(),
        1 / (1 + math.exp(-X)),
        math.exp(-X) / (1 + math.exp(-X)) ** 2,
        0.0,
    ),
    "relu": (lambda x, y: x.relu() + y.relu(), X, 1.0, 0.0),
    "add": (lambda x, y: x.add(y), X + Y, 1.0, 1.0),
    "sub": (lambda x, y: x.sub(y), X - Y, 1.0, -1.0),
    "mul": (lambda x, y: x.mul(y), X * Y, Y, X),
    "div": (lambda x, y: x.div(y), X / Y, 1 / Y, -X / Y**2),
    "pow": (lambda x, y: x.pow(3), X**3, 3 * X**2, 0.0),
    "maximum": (lambda x, y: x.maximum(y), max(X, Y), 1.0, 0.0),
    "minimum": (lambda x, y: x.minimum(y), min(X, Y), 0.0, 1.0),
    "number": (lambda x, y: y.mul(2.0).add(1), 2 * Y + 1, 0.0, 2.0),
}


@pytest.fixture(scope="module")
def client(target):
    with Client(target) as client:
        yield client


@pytest.mark.parametrize("name", CASES)
def test_each_method_computes_its_op_and_derivative(client, name):
    build, value, dx, dy = CASES[name]
    x, y = Value(X), Value(Y)
    result = client.evaluate(build(x, y), wrt=[x, y])
    assert result.outputs[0] == pytest.approx(value, rel=1e-14)
    assert result.grads.tolist() == pytest.approx([dx, dy], rel=1e-14, abs=1e-15)


def test_methods_record_the_servers_op_names():
    x, y = Value(X), Value(Y)
    assert [v._op for v in (x.sin(), x.cos(), x.sqrt(), x.abs(), abs(x))] == [
        "sin",
        "cos",
        "sqrt",
        "abs",
        "abs",
    ]
    assert [v._op for v in (x.maximum(y), x.minimum(y), x.add(y), x.mul(y))] == [
        "max",
        "min",
        "+",
        "*",
    ]


def test_a_method_refuses_what_is_no_value_or_number():
    with pytest.raises(TypeError, match="expected a Value or a number, got 'a'"):
        Value(1.0).add("a")


@pytest.fixture
def default_server(monkeypatch, target):
    monkeypatch.delenv(default.ENVIRONMENT_VARIABLE, raising=False)
    gradserve.client.use(target)
    yield
    gradserve.client.use(None)


def test_float_and_item_give_the_data_as_a_python_float(default_server):
    x = Value(2)
    assert float(x) == 2.0 and type(x.item()) is float
    y = (x * 1.5).sin()
    assert float(y) == y.item() == pytest.approx(math.sin(3.0), rel=1e-15)
    assert type(y.item()) is float
    assert f"{x.item():.2f}" == "2.00"


def test_float_of_a_pending_value_without_a_server_says_how_to_set_one(monkeypatch):
    monkeypatch.delenv(default.ENVIRONMENT_VARIABLE, raising=False)
    gradserve.client.use(None)
    with pytest.raises(NoServerConfigured, match="GRADSERVE_TARGET"):
        float(Value(1.0) * 2)
    assert float(Value(1.0)) == 1.0  # a leaf needs no server
