"""Tangents in the engine: JVPs and HVPs against closed forms and central finite
differences, on random graphs over every op (the special plugin's included), chains, rows,
shared nodes and repeated inputs; refusals and cancellation."""

import math

import numpy as np
import pytest
from graphs import GraphBuilder
from second_graphs import SPECIAL, random_graph

from gradserve.ops import Op
from gradserve.server.engine.errors import Cancelled, GraphError
from gradserve.server.engine.evaluate import evaluate
from gradserve.server.engine.plan import Stretch, compile_graph
from gradserve.server.engine.second_order import evaluate_with_tangents

H = 1e-5  # finite-difference step along the tangent


@pytest.fixture
def all_ops(ops, monkeypatch):
    """The loaded ops and gradserve-ops-special's, imported from its source folder."""
    monkeypatch.syspath_prepend(str(SPECIAL))
    import gradserve_ops_special as special

    return {**ops, **{op.name: op for op in (special.erf, special.gelu, special.logaddexp)}}


def compiled(builder: GraphBuilder, ops):
    return compile_graph(builder.arrays(), ops)


def last(plan):
    return np.array([plan.node_count - 1]), np.ones(1)


def finite_differences(plan, x, t, outputs, seeds):
    """Central differences along t of every node's value and gradient (first order, whose
    gradients tests/test_engine.py checks against finite differences of values)."""
    v_up, g_up = evaluate(plan, x + H * t, outputs, seeds)
    v_down, g_down = evaluate(plan, x - H * t, outputs, seeds)
    return (v_up - v_down) / (2 * H), (g_up - g_down) / (2 * H)


def test_closed_form_of_a_small_function(ops):
    # f(x, y) = x^2 y + sin(x y): the gradient's tangent is the Hessian times t.
    g = GraphBuilder()
    x, y = g.leaf(0.7), g.leaf(-1.3)
    xx = g.op("mul", x, x)  # a repeated input
    xy = g.op("mul", x, y)  # shared by two readers
    g.op("add", g.op("mul", xx, y), g.op("sin", xy))
    plan = compiled(g, ops)
    t = np.array([0.3, -2.0])
    _, grads, vt, gt = evaluate_with_tangents(plan, np.array([0.7, -1.3]), t, *last(plan))
    a, b = 0.7, -1.3
    c, s = math.cos(a * b), math.sin(a * b)
    gradient = np.array([2 * a * b + b * c, a * a + a * c])
    hessian = np.array([[2 * b - b * b * s, 2 * a + c - a * b * s], [0.0, -a * a * s]])
    hessian[1, 0] = hessian[0, 1]
    np.testing.assert_allclose(grads[[x, y]], gradient, rtol=1e-14)
    np.testing.assert_allclose(vt[-1], gradient @ t, rtol=1e-14)
    np.testing.assert_allclose(gt[[x, y]], hessian @ t, rtol=1e-13)
    assert vt[xx] == pytest.approx(2 * a * t[0], rel=1e-15)


@pytest.mark.parametrize("seed", range(12))
def test_random_graphs_over_every_op_match_finite_differences(all_ops, seed):
    rng = np.random.default_rng(seed)
    builder = random_graph(all_ops, rng)
    plan = compiled(builder, all_ops)
    x = np.array(builder.leaf_values)
    t = rng.normal(size=len(x))
    outputs = np.array([plan.node_count - 1, plan.node_count - 3])
    seeds = np.array([1.0, -0.5])
    values, grads, vt, gt = evaluate_with_tangents(plan, x, t, outputs, seeds)
    np.testing.assert_array_equal((values, grads), evaluate(plan, x, outputs, seeds))
    value_fd, grad_fd = finite_differences(plan, x, t, outputs, seeds)
    np.testing.assert_allclose(vt, value_fd, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gt, grad_fd, rtol=1e-5, atol=1e-5)


def test_every_op_is_exercised_by_the_random_graphs(all_ops):
    used = set()
    for seed in range(12):
        used |= set(random_graph(all_ops, np.random.default_rng(seed)).op_names)
    assert used == set(all_ops)


def test_rows_equal_separate_calls_and_make_a_symmetric_hessian(all_ops):
    builder = random_graph(all_ops, np.random.default_rng(99), n_leaves=5)
    plan = compiled(builder, all_ops)
    x = np.array(builder.leaf_values)
    n = len(x)
    _, _, _, gt = evaluate_with_tangents(plan, np.tile(x, (n, 1)), np.eye(n), *last(plan))
    hessian = gt[plan.leaves].T  # row r: H e_r
    for r in range(n):
        single = evaluate_with_tangents(plan, x, np.eye(n)[r], *last(plan))[3]
        np.testing.assert_allclose(hessian[r], single[plan.leaves], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hessian, hessian.T, rtol=1e-9, atol=1e-11)


def test_a_chain_runs_through_its_stretch(ops):
    # tanh(tanh(... tanh(x) * c ...)): one node per level, so the plan has a Stretch.
    g = GraphBuilder()
    node, c = g.leaf(0.4), g.leaf(1.1)
    for _ in range(40):
        node = g.op("tanh", g.op("mul", node, c))
    plan = compiled(g, ops)
    assert any(isinstance(step, Stretch) for step in plan.steps)
    x, t = np.array([0.4, 1.1]), np.array([1.0, -0.7])
    _, _, vt, gt = evaluate_with_tangents(plan, x, t, *last(plan))
    value_fd, grad_fd = finite_differences(plan, x, t, *last(plan))
    np.testing.assert_allclose(vt, value_fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gt, grad_fd, rtol=1e-5, atol=1e-8)
    rows = evaluate_with_tangents(plan, np.stack([x, x]), np.stack([t, 2 * t]), *last(plan))
    np.testing.assert_allclose(rows[3][:, 0], gt, rtol=1e-12)
    np.testing.assert_allclose(rows[3][:, 1], 2 * gt, rtol=1e-12)


def test_variadic_sum_of_squares(ops):
    # f = sum(x_i * x_i): Hessian 2I, so H t = 2t.
    g = GraphBuilder()
    leaves = [g.leaf(v) for v in (1.0, -2.0, 0.5)]
    g.op("sum", *[g.op("mul", x, x) for x in leaves], leaves[0])
    plan = compiled(g, ops)
    t = np.array([0.1, 0.2, -0.3])
    _, _, vt, gt = evaluate_with_tangents(plan, np.array([1.0, -2.0, 0.5]), t, *last(plan))
    np.testing.assert_array_equal(gt[leaves], 2 * t)
    assert vt[-1] == pytest.approx(2 * 1.0 * 0.1 + 2 * -2.0 * 0.2 + 2 * 0.5 * -0.3 + 0.1)


def test_an_op_without_second_derivatives_is_refused_by_name(ops):
    lacking = Op("cube", 1, lambda x: x**3, lambda g, y, x: (3 * g * x * x,))
    g = GraphBuilder()
    x = g.leaf(2.0)
    g.op("cube", g.op("sin", x))
    plan = compiled(g, {**ops, "cube": lacking})
    with pytest.raises(GraphError, match="op 'cube' has no second derivatives") as caught:
        evaluate_with_tangents(plan, np.array([2.0]), np.array([1.0]), *last(plan))
    assert caught.value.node == 2


def test_tangents_of_the_wrong_length_are_refused(ops):
    g = GraphBuilder()
    g.op("sin", g.leaf(1.0))
    plan = compiled(g, ops)
    with pytest.raises(GraphError, match="leaf_tangents has 2 entries"):
        evaluate_with_tangents(plan, np.array([1.0]), np.array([1.0, 2.0]), *last(plan))


def test_non_finite_tangents_are_refused_unless_allowed(ops):
    g = GraphBuilder()
    g.op("exp", g.leaf(1.0))
    plan = compiled(g, ops)
    x, t = np.array([1.0]), np.array([math.inf])
    with pytest.raises(GraphError, match="tangent of the value is inf"):
        evaluate_with_tangents(plan, x, t, *last(plan), allow_non_finite=False)
    _, _, vt, _ = evaluate_with_tangents(plan, x, t, *last(plan), allow_non_finite=True)
    assert vt[-1] == math.inf


def test_cancelled_between_groups(ops):
    g = GraphBuilder()
    a, b = g.leaf(1.0), g.leaf(2.0)
    for _ in range(5):
        a, b = g.op("mul", a, b), g.op("add", a, b)
    plan = compiled(g, ops)
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 2 * len(plan.steps) + 1  # past evaluate, in the tangent passes

    with pytest.raises(Cancelled):
        evaluate_with_tangents(plan, np.array([1.0, 2.0]), np.ones(2), *last(plan), should_stop)


def test_a_gradient_tangent_that_overflows_is_refused_unless_allowed(ops):
    """sqrt at 1e-210: its value, gradient and value tangent are finite, but the gradient's
    tangent, -t/4 x^-1.5, overflows. The value-tangent check cannot catch it."""
    g = GraphBuilder()
    g.op("sqrt", g.leaf(1e-210))
    plan = compiled(g, ops)
    x, t = np.array([1e-210]), np.array([1.0])
    with pytest.raises(GraphError, match="tangent of the gradient is -inf"):
        evaluate_with_tangents(plan, x, t, *last(plan), allow_non_finite=False)
    values, grads, vt, gt = evaluate_with_tangents(plan, x, t, *last(plan))
    assert np.isfinite([values[1], grads[0], vt[1]]).all() and gt[0] == -math.inf


def test_of_two_ops_without_second_derivatives_the_first_is_named(ops):
    def lacking(name: str) -> Op:
        return Op(name, 1, lambda x: x**3, lambda g, y, x: (3 * g * x * x,))

    g = GraphBuilder()
    first = g.op("cube", g.op("sin", g.leaf(2.0)))
    g.op("tesseract", g.op("cube", first))
    plan = compiled(g, {**ops, "cube": lacking("cube"), "tesseract": lacking("tesseract")})
    with pytest.raises(GraphError, match="op 'cube' has no second derivatives") as caught:
        evaluate_with_tangents(plan, np.array([2.0]), np.array([1.0]), *last(plan))
    assert caught.value.node == 2


def test_the_reverse_tangent_pass_polls_the_stop_check(ops):
    """An op whose second derivatives record that the reverse tangent pass reached it, near
    the graph's end (so reached first), and three wide levels before it: a stop check that
    says stop from then on must end that pass. No other pass calls ``second``."""
    reached = []

    def second(y, x):
        reached.append(1)
        return (6 * x,)

    cube = Op("cube", 1, lambda x: x**3, lambda g, y, x: (3 * g * x * x,), second=second)
    g = GraphBuilder()
    a, b = g.leaf(0.5), g.leaf(0.25)
    for _ in range(3):  # wide levels: groups, not a chain's stretch
        a, b = g.op("mul", a, b), g.op("add", a, b)
    g.op("cube", g.op("add", a, b))
    plan = compiled(g, {**ops, "cube": cube})
    x, t = np.array([0.5, 0.25]), np.array([1.0, -1.0])
    evaluate_with_tangents(plan, x, t, *last(plan))  # runs through without a stop
    assert reached
    reached.clear()
    with pytest.raises(Cancelled):
        evaluate_with_tangents(plan, x, t, *last(plan), should_stop=lambda: bool(reached))
