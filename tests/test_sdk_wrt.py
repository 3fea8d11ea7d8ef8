"""``wrt`` lists with repeats and with Values the outputs do not read (issue 21, point 5;
issue 26), and plan reuse across graphs of one op sequence wired differently (issue 26).

A Value the outputs do not read gets gradient 0, and zero rows and columns in ``jvp``,
``hvp`` and ``hessian``, as micrograd, ``torch.autograd.functional.hessian`` and
``jax.hessian`` have it, through ``evaluate``, ``stream`` and the async client alike. Every
expectation comes from closed forms written here, never from the SDK.
"""

import asyncio
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradserve.client import AsyncClient, Client, Value

POINT = {"a": 0.8, "b": -0.4, "c": 1.3, "u": 2.5}
NAMES = list(POINT)  # "u" is read by nothing


def _f(values: dict) -> Value:
    a, b, c = values["a"], values["b"], values["c"]
    return a * a * b + (a * c).sin() + b.exp() * c


def _gradient() -> dict:
    a, b, c = POINT["a"], POINT["b"], POINT["c"]
    return {
        "a": 2 * a * b + c * math.cos(a * c),
        "b": a * a + math.exp(b) * c,
        "c": a * math.cos(a * c) + math.exp(b),
        "u": 0.0,
    }


def _hessian() -> dict:
    a, b, c = POINT["a"], POINT["b"], POINT["c"]
    h = {
        ("a", "a"): 2 * b - c * c * math.sin(a * c),
        ("a", "b"): 2 * a,
        ("a", "c"): math.cos(a * c) - a * c * math.sin(a * c),
        ("b", "b"): math.exp(b) * c,
        ("b", "c"): math.exp(b),
        ("c", "c"): -a * a * math.sin(a * c),
    }
    h.update({(j, i): v for (i, j), v in list(h.items())})
    return {(i, j): h.get((i, j), 0.0) for i in NAMES for j in NAMES}


GRADIENT, HESSIAN = _gradient(), _hessian()


@pytest.fixture(scope="module")
def client(target):
    with Client(target) as client:
        yield client


def _leaves() -> dict:
    return {name: Value(x, name) for name, x in POINT.items()}


wrt_lists = st.lists(st.sampled_from(NAMES), min_size=1, max_size=6)
directions = st.lists(st.floats(-2, 2), min_size=6, max_size=6)
slow_settings = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@slow_settings
@given(names=wrt_lists, direction=directions)
def test_random_wrt_lists_against_closed_forms(client, names, direction):
    leaves = _leaves()
    out = _f(leaves)
    wrt = [leaves[name] for name in names]
    t = np.array(direction[: len(names)])
    gradient = np.array([GRADIENT[name] for name in names])
    hessian = np.array([[HESSIAN[i, j] for j in names] for i in names])

    result = client.evaluate(out, wrt=wrt)
    np.testing.assert_allclose(result.grads, gradient, rtol=1e-13, atol=1e-15)
    assert result.values.tolist() == [POINT[name] for name in names]
    assert client.jvp(out, wrt, t) == pytest.approx(gradient @ t, rel=1e-12, abs=1e-13)
    np.testing.assert_allclose(client.hvp(out, wrt, t), hessian @ t, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(client.hessian(out, wrt), hessian, rtol=1e-12, atol=1e-13)


def test_a_value_listed_twice_gets_both_directions(client):
    """d/dx x^3 . (1 + 2) at 1.5 = 3 * 1.5^2 * 3 = 20.25; d2/dx2 = 6x = 9."""
    x = Value(1.5)
    assert client.jvp(x**3, [x, x], [1.0, 2.0]) == 20.25
    np.testing.assert_allclose(client.hvp(x**3, [x, x], [1.0, 2.0]), [27.0, 27.0], rtol=1e-14)
    np.testing.assert_allclose(client.hessian(x**3, [x, x]), np.full((2, 2), 9.0), rtol=1e-14)


def test_jvp_matches_a_finite_difference_along_a_direction_with_repeats(client):
    """The JVP is the derivative of f(p + h t) at h = 0, where a Value listed twice moves by
    the sum of its entries of t."""
    names, t = ["a", "c", "a", "u", "b"], np.array([0.3, -1.1, 0.7, 5.0, 0.2])
    move = {name: 0.0 for name in NAMES}
    for name, step in zip(names, t, strict=True):
        move[name] += step

    def f_at(h):
        moved = {name: Value(POINT[name] + h * move[name]) for name in NAMES}
        return client.evaluate(_f(moved), wrt=[]).outputs[0]

    h = 1e-5
    central = (f_at(h) - f_at(-h)) / (2 * h)
    leaves = _leaves()
    got = client.jvp(_f(leaves), [leaves[n] for n in names], t)
    assert got == pytest.approx(central, rel=1e-8)


def test_an_unread_op_node_in_wrt_has_its_value_and_gradient_zero(client):
    leaves = _leaves()
    side = leaves["u"] * 2  # on the same tape, not read by the output
    elsewhere = Value(3.0).tanh()  # on a tape of its own
    result = client.evaluate(_f(leaves), wrt=[side, leaves["a"], elsewhere])
    assert result.values.tolist() == pytest.approx([5.0, 0.8, math.tanh(3.0)], rel=1e-15)
    assert result.grads.tolist() == pytest.approx([0.0, GRADIENT["a"], 0.0], rel=1e-13)


def test_stream_gives_zero_for_an_unread_value(client):
    leaves = _leaves()
    chunks = list(client.stream(_f(leaves), wrt=[leaves["u"], leaves["b"]], progress=False))
    got = {
        v.label: (x, g) for c in chunks for v, x, g in zip(c.nodes, c.values, c.grads, strict=True)
    }
    assert got == {"u": (2.5, 0.0), "b": (-0.4, pytest.approx(GRADIENT["b"], rel=1e-13))}


def test_the_async_client_gives_zeros_too(target):
    async def calls():
        leaves = _leaves()
        out, u, a = _f(leaves), leaves["u"], leaves["a"]
        async with AsyncClient(target) as client:
            evaluation = await client.evaluate(out, wrt=[u, a])
            hessian = await client.hessian(out, [a, u])
            jvp = await client.jvp(out, [u], [1.0])
            hvp = await client.hvp(out, [u, a], [1.0, 1.0])
            chunks = [c async for c in client.stream(out, wrt=[u], progress=False)]
        return evaluation, hessian, jvp, hvp, chunks

    evaluation, hessian, jvp, hvp, chunks = asyncio.run(calls())
    assert evaluation.grads.tolist() == pytest.approx([0.0, GRADIENT["a"]], rel=1e-13)
    np.testing.assert_allclose(hessian, [[HESSIAN["a", "a"], 0.0], [0.0, 0.0]], rtol=1e-12)
    assert jvp == 0.0
    np.testing.assert_allclose(hvp, [0.0, HESSIAN["a", "a"]], rtol=1e-12)
    assert [c.grads.tolist() for c in chunks] == [[0.0]]


def test_backward_leaves_an_unread_values_grad_at_zero(client):
    leaves = _leaves()
    leaves["u"].grad = 7.0  # as if from an earlier step
    _f(leaves).backward(client)
    assert leaves["a"].grad == pytest.approx(GRADIENT["a"], rel=1e-13)
    assert leaves["u"].grad == 7.0  # micrograd's backward does not touch what it never reads


# --- plan reuse: one op sequence, different wiring, one Client ----------------------------

# op: (arity, value, local derivatives)
OPS = {
    "add": (2, lambda x, y: x + y, lambda x, y: (1.0, 1.0)),
    "sub": (2, lambda x, y: x - y, lambda x, y: (1.0, -1.0)),
    "mul": (2, lambda x, y: x * y, lambda x, y: (y, x)),
    "tanh": (1, math.tanh, lambda x: (1 - math.tanh(x) ** 2,)),
    "sin": (1, math.sin, lambda x: (math.cos(x),)),
}
RECORD = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "tanh": Value.tanh,
    "sin": Value.sin,
}


@st.composite
def graph_pairs(draw):
    """Leaf data, one op sequence, and two wirings of it (each input an earlier node)."""
    leaves = draw(st.lists(st.floats(-1.5, 1.5), min_size=2, max_size=4))
    ops = draw(st.lists(st.sampled_from(list(OPS)), min_size=2, max_size=8))
    wirings = []
    for _ in range(2):
        wiring = []
        for k, op in enumerate(ops):
            earlier = len(leaves) + k
            wiring.append([draw(st.integers(0, earlier - 1)) for _ in range(OPS[op][0])])
        wirings.append(wiring)
    return leaves, ops, wirings


def _reference(leaves, ops, wiring):
    """Plain floats: the loss (the sum of every node, so each one is sent) and the
    gradients of the leaves, by one reverse sweep."""
    values = list(leaves)
    for op, inputs in zip(ops, wiring, strict=True):
        values.append(OPS[op][1](*(values[i] for i in inputs)))
    grads = [1.0] * len(values)  # d loss / d node from the final sum
    for k in range(len(ops) - 1, -1, -1):
        node = len(leaves) + k
        inputs = wiring[k]
        for i, local in zip(inputs, OPS[ops[k]][2](*(values[i] for i in inputs)), strict=True):
            grads[i] += grads[node] * local
    return sum(values), grads[: len(leaves)]


def _recorded(leaves, ops, wiring):
    nodes = [Value(x) for x in leaves]
    for op, inputs in zip(ops, wiring, strict=True):
        nodes.append(RECORD[op](*(nodes[i] for i in inputs)))
    loss = nodes[0]
    for node in nodes[1:]:
        loss = loss + node
    return loss, nodes[: len(leaves)]


@slow_settings
@given(pair=graph_pairs())
def test_graphs_wired_differently_never_share_a_plan(client, pair):
    """One Client, three backward passes (first wiring, second, first again): a client
    that reused the first structure's plan for the second would get its gradients."""
    leaves, ops, wirings = pair
    for wiring in (wirings[0], wirings[1], wirings[0]):
        loss, values = _recorded(leaves, ops, wiring)
        loss.backward(client)
        expected_loss, expected_grads = _reference(leaves, ops, wiring)
        assert loss.data == pytest.approx(expected_loss, rel=1e-12, abs=1e-12)
        assert [v.grad for v in values] == pytest.approx(expected_grads, rel=1e-12, abs=1e-12)


def test_the_issues_example_gets_its_own_plan(client):
    """backward on (x*y)+x, then on (x*y)+y: (3, 3) the second time, not (4, 2)."""
    x, y = Value(2.0), Value(3.0)
    (x * y + x).backward(client)
    assert (x.grad, y.grad) == (4.0, 2.0)
    (x * y + y).backward(client)
    assert (x.grad, y.grad) == (3.0, 3.0)
