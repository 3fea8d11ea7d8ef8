"""Chains with one row of values run on Python floats (the ops' scalar forwards): the same
values, errors and gradients as node by node on arrays."""

import dataclasses
import math

import numpy as np
import pytest
from graphs import GraphBuilder
from hardening import chain

from gradserve.ops import Op
from gradserve.server.engine.errors import Cancelled, GraphError, OpFailure
from gradserve.server.engine.evaluate import evaluate
from gradserve.server.engine.plan import Stretch, compile_graph
from gradserve.server.engine.scalar_stretch import POLL_EVERY


def stretch_of(g: GraphBuilder, ops) -> Stretch:
    plan = compile_graph(g.arrays(), ops)
    assert [type(step) for step in plan.steps] == [Stretch]
    return plan.steps[0]


def run(g: GraphBuilder, ops, allow_non_finite=True, should_stop=lambda: False):
    plan = compile_graph(g.arrays(), ops)
    out = np.array([plan.node_count - 1])
    leaves = np.array(g.leaf_values)
    return evaluate(plan, leaves, out, np.ones(1), should_stop, allow_non_finite)


def without_scalars(ops) -> dict[str, Op]:
    return {name: dataclasses.replace(op, scalar=None) for name, op in ops.items()}


def polynomial_chain(links: int, x: float, c: float) -> GraphBuilder:
    """y = x, then ``links`` times y = y * c + x: y = x (1 + c + ... + c^links)."""
    g = GraphBuilder()
    xn, cn = g.leaf(x), g.leaf(c)
    y = xn
    for _ in range(links):
        y = g.op("add", g.op("mul", y, cn), xn)
    return g


def test_a_chain_of_arithmetic_matches_closed_forms(ops):
    links, x, c = 40, 1.5, 0.75
    g = polynomial_chain(links, x, c)
    assert stretch_of(g, ops).scalars is not None
    values, grads = run(g, ops)
    powers = [c**j for j in range(links + 1)]
    assert values[-1] == pytest.approx(x * math.fsum(powers), rel=1e-13)
    assert grads[0] == pytest.approx(math.fsum(powers), rel=1e-13)  # x is read by every add
    dc = x * math.fsum(j * c ** (j - 1) for j in range(1, links + 1))
    assert grads[1] == pytest.approx(dc, rel=1e-13)


def mixed_chain(length: int) -> GraphBuilder:
    """Unary and binary ops, with nodes read again further down and leaves read throughout."""
    g = GraphBuilder()
    x, c = g.leaf(0.3), g.leaf(0.7)
    y, earlier = x, x
    steps = [("tanh",), ("mul", c), ("add", x), ("sin",), ("sub", None), ("sigmoid",), ("max", c)]
    for k in range(length):
        name, *others = steps[k % len(steps)]
        y, earlier = g.op(name, y, *(earlier if o is None else o for o in others)), y
    return g


def test_floats_give_the_values_and_gradients_of_the_array_path(ops):
    g = mixed_chain(300)
    assert stretch_of(g, ops).scalars is not None
    assert stretch_of(g, without_scalars(ops)).scalars is None
    values, grads = run(g, ops)
    array_values, array_grads = run(g, without_scalars(ops))
    # tanh, sin and sigmoid may round an ulp or two differently on floats
    assert values == pytest.approx(array_values, rel=1e-14, abs=1e-300)
    assert grads == pytest.approx(array_grads, rel=1e-12, abs=1e-300)


def test_an_op_without_a_scalar_forward_keeps_the_chain_on_arrays(ops):
    g = polynomial_chain(20, 0.5, -1.25)
    g.op("tanh", len(g.node_ops) - 1)
    mixed = {**ops, "tanh": dataclasses.replace(ops["tanh"], scalar=None)}
    assert stretch_of(g, mixed).scalars is None
    values, _ = run(g, mixed)
    expected = math.tanh(0.5 * math.fsum((-1.25) ** j for j in range(21)))
    assert values[-1] == pytest.approx(expected, rel=1e-13)


def test_a_node_with_three_inputs_keeps_the_chain_on_arrays(ops):
    g = GraphBuilder()
    x, c = g.leaf(0.5), g.leaf(0.25)
    y = x
    for _ in range(20):
        y = g.op("sum", y, c, c)  # y + 2c
    assert stretch_of(g, ops).scalars is None
    values, grads = run(g, ops)
    assert (values[-1], grads[x], grads[c]) == (0.5 + 20 * 0.5, 1.0, 40.0)


def overflow_chain() -> tuple[GraphBuilder, int]:
    """exp(800) = inf, where math.exp raises OverflowError: then -inf, 0, 800, inf, ..."""
    g = GraphBuilder()
    x = g.leaf(800.0)
    y = x
    for _ in range(5):
        y = g.op("add", g.op("exp", g.op("neg", g.op("exp", y))), x)
    return g, 1  # the first node that overflows


def test_where_math_raises_the_node_takes_the_array_forward(ops):
    g, first = overflow_chain()
    stretch = stretch_of(g, ops)
    assert stretch.scalars is not None
    with pytest.raises(OverflowError):
        stretch.scalars[0](800.0)
    values, _ = run(g, ops)
    assert values[1:5].tolist() == [math.inf, -math.inf, 0.0, 800.0]
    assert values[-1] == 800.0
    with pytest.raises(GraphError, match="the op produced inf from finite inputs") as caught:
        run(g, ops, allow_non_finite=False)
    assert caught.value.node == first


def test_the_first_node_outside_its_domain_is_reported(ops):
    # log(0): math.log raises ValueError (NumPy gives -inf); then a division by zero further
    # down, where Python raises ZeroDivisionError. The first bad node is named, as on arrays.
    g = GraphBuilder()
    zero = g.leaf(0.0)
    y = zero
    for _ in range(20):
        y = g.op("neg", y)
    bad = g.op("log", y)
    y = g.op("div", bad, zero)
    for _ in range(20):
        y = g.op("neg", y)
    assert stretch_of(g, ops).scalars is not None
    for engine_ops in (ops, without_scalars(ops)):
        with pytest.raises(GraphError) as caught:
            run(g, engine_ops)
        assert caught.value.node == bad
        assert "op 'log' is not defined at (0.0)" in str(caught.value)


def test_a_scalar_forward_that_fails_is_an_op_failure(ops):
    def fails(x):
        raise RuntimeError("plugin bug")

    bad = {**ops, "bad": Op("bad", 1, np.copy, lambda g, y, x: (g,), scalar=fails)}
    g = chain("tanh", 30)
    g.op("bad", 30)
    with pytest.raises(OpFailure, match="failed in forward") as caught:
        run(g, bad)
    assert (caught.value.op, caught.value.node) == ("bad", 31)


@pytest.mark.parametrize("at", [10, 40])  # a node in the middle, the last node
def test_a_scalar_forward_that_returns_no_float_is_named(ops, at):
    def returns_none(x):
        return None

    bad = {**ops, "bad": Op("bad", 1, np.copy, lambda g, y, x: (g,), scalar=returns_none)}
    g = GraphBuilder()
    y = g.leaf(0.5)
    for node in range(1, 41):
        y = g.op("bad" if node == at else "tanh", y)
    with pytest.raises(OpFailure, match="scalar forward returned NoneType") as caught:
        run(g, bad)  # the tanh after it fails on None: the bad node is named, not the tanh
    assert (caught.value.op, caught.value.node) == ("bad", at)


def test_should_stop_is_polled_every_few_hundred_nodes():
    calls = []

    def counted(x):
        calls.append(x)
        return x

    op = Op("f", 1, np.copy, lambda g, y, x: (g.copy(),), scalar=counted)
    g = chain("f", 10 * POLL_EVERY)
    polls = []

    def should_stop():
        polls.append(None)
        return len(polls) > 2  # once before the stretch, once before its first nodes

    with pytest.raises(Cancelled):
        run(g, {"f": op}, should_stop=should_stop)
    assert len(calls) == POLL_EVERY


def test_the_layout_lists_outside_inputs_then_the_nodes(ops):
    stretch = stretch_of(mixed_chain(100), ops)
    assert not np.isin(stretch.outside, stretch.nodes).any()
    assert np.array_equal(stretch.outside, np.unique(stretch.outside))
    places = np.concatenate([stretch.outside, stretch.nodes])
    assert np.array_equal(places[stretch.local_inputs], stretch.inputs)
