"""Forward values and gradients, checked against closed forms and finite differences."""

import dataclasses
import math

import numpy as np
import pytest
from graphs import GraphBuilder, neuron, notebook_first_example

from gradserve.ops import Op
from gradserve.server.engine import run as engine_run
from gradserve.server.engine.errors import Cancelled, GraphError, OpFailure
from gradserve.server.engine.evaluate import evaluate
from gradserve.server.engine.plan import Stretch, compile_graph


def run(builder: GraphBuilder, ops, outputs=None, seeds=None):
    plan = compile_graph(builder.arrays(), ops)
    outputs = np.array([plan.node_count - 1] if outputs is None else outputs)
    seeds = np.ones(len(outputs)) if seeds is None else np.array(seeds)
    return evaluate(plan, np.array(builder.leaf_values), outputs, seeds)


def test_notebook_neuron(ops):
    g, ids = neuron()
    values, grads = run(g, ops)
    assert values[ids["o"]] == pytest.approx(math.sqrt(0.5), rel=1e-12)
    expected = {"n": 0.5, "x1": -1.5, "w1": 1.0, "x2": 0.5, "w2": 0.0, "b": 0.5}
    for name, grad in expected.items():
        assert grads[ids[name]] == pytest.approx(grad, rel=1e-12, abs=1e-15), name


def test_notebook_first_example(ops):
    g, ids = notebook_first_example()
    values, grads = run(g, ops)
    assert values[ids["e"]] == 80.0
    assert [grads[ids[k]] for k in "abcd"] == [10.0, 10.0, 10.0, 8.0]


def test_repeated_input_gets_both_contributions(ops):
    g = GraphBuilder()
    x = g.leaf(3.0)
    g.op("mul", x, x)
    values, grads = run(g, ops)
    assert (values[-1], grads[x]) == (9.0, 6.0)


def test_node_reached_by_two_paths_is_counted_once_per_path(ops):
    # The notebook's topological sort visited such a node twice; its gradient doubled.
    g = GraphBuilder()
    a = g.leaf(-2.0)
    b = g.leaf(3.0)
    d = g.op("mul", a, b)  # d = ab, used twice below
    e = g.op("add", a, b)
    f = g.op("mul", d, e)
    g.op("add", f, d)  # L = ab(a+b) + ab
    _, grads = run(g, ops)
    av, bv = -2.0, 3.0
    assert grads[a] == bv * (av + bv) + av * bv + bv
    assert grads[b] == av * (av + bv) + av * bv + av
    assert grads[d] == (av + bv) + 1
    assert grads[e] == av * bv
    assert grads[f] == 1.0


def test_tanh_backward_multiplies_the_upstream_gradient(ops):
    # The notebook's tanh forgot the upstream factor: d(3*tanh(x))/dx came out 1 - t^2.
    g = GraphBuilder()
    x = g.leaf(0.3)
    three = g.leaf(3.0)
    t = g.op("tanh", x)
    g.op("mul", three, t)
    _, grads = run(g, ops)
    assert grads[x] == pytest.approx(3.0 * (1.0 - math.tanh(0.3) ** 2), rel=1e-15)


def test_several_outputs_with_seeds(ops):
    g = GraphBuilder()
    a, b = g.leaf(2.0), g.leaf(5.0)
    s = g.op("add", a, b)
    p = g.op("mul", a, b)
    # seeds: 0.5 * s + 2 * p + 1 * p (p listed twice: seeds add)
    _, grads = run(g, ops, outputs=[s, p, p], seeds=[0.5, 2.0, 1.0])
    assert grads[a] == 0.5 + 3.0 * 5.0
    assert grads[b] == 0.5 + 3.0 * 2.0


def random_graph(rng: np.random.Generator, leaves: int, nodes: int) -> GraphBuilder:
    """A random graph with shared nodes and, often, repeated inputs."""
    g = GraphBuilder()
    for _ in range(leaves):
        g.leaf(float(rng.uniform(-1.5, 1.5)))
    for _ in range(nodes):
        n = len(g.node_ops)
        name = rng.choice(["add", "mul", "tanh"])
        if name == "tanh":
            g.op(name, int(rng.integers(n)))
        else:
            # Bias toward recent nodes (depth) while still sharing old ones.
            a, b = (int(n - 1 - min(rng.geometric(0.3), n - 1)) for _ in range(2))
            g.op(name, a, b)
    return g


@pytest.mark.parametrize("seed", range(12))
def test_gradients_match_central_differences(ops, seed):
    rng = np.random.default_rng(seed)
    g = random_graph(rng, leaves=4, nodes=int(rng.integers(5, 40)))
    plan = compile_graph(g.arrays(), ops)
    leaves = np.array(g.leaf_values)
    out, seeds = np.array([plan.node_count - 1]), np.ones(1)
    _, grads = evaluate(plan, leaves, out, seeds)

    def f(x):
        return evaluate(plan, x, out, seeds)[0][-1]

    for k, leaf in enumerate(plan.leaves):
        h = 1e-6 * max(1.0, abs(leaves[k]))
        up, down = leaves.copy(), leaves.copy()
        up[k] += h
        down[k] -= h
        numeric = (f(up) - f(down)) / (2 * h)
        assert grads[leaf] == pytest.approx(numeric, rel=1e-5, abs=1e-6)


def test_million_node_chain_needs_no_recursion(ops):
    # x, c leaves; then alternately y = y + c and y = tanh(y), 999,998 op nodes.
    n = 1_000_000
    g = GraphBuilder()
    x, c = g.leaf(0.5), g.leaf(0.1)
    y = x
    for k in range(2, n):
        y = g.op("add", y, c) if k % 2 == 0 else g.op("tanh", y)
    values, grads = run(g, ops)

    # Independent oracle: the same recurrence with math.tanh, then the chain rule backward.
    y, slopes = 0.5, []
    for k in range(2, n):
        if k % 2 == 0:
            y += 0.1
        else:
            y = math.tanh(y)
            slopes.append(1.0 - y * y)
    assert values[-1] == pytest.approx(y, rel=1e-12)  # np.tanh and math.tanh may differ by an ulp
    dc, upstream = 0.0, 1.0
    for slope in reversed(slopes):  # each tanh is preceded by one add of c
        upstream *= slope
        dc += upstream
    assert grads[c] == pytest.approx(dc, rel=1e-9)


def test_missing_leaf_values_are_reported(ops):
    g, _ = notebook_first_example()
    plan = compile_graph(g.arrays(), ops)
    with pytest.raises(GraphError, match=r"3 leaves but leaf_values has 2.*leaf 3 \('d'\)"):
        evaluate(plan, np.array([1.0, 2.0]), np.array([4]), np.ones(1))
    with pytest.raises(GraphError, match="3 leaves but leaf_values has 4"):
        evaluate(plan, np.ones(4), np.array([4]), np.ones(1))


def faulty(forward=np.negative, backward=lambda g, y, x: (-g,)) -> dict:
    return {"bad": Op("bad", 1, forward=forward, backward=backward)}


def one_bad_node() -> GraphBuilder:
    g = GraphBuilder()
    g.op("bad", g.leaf(1.0))
    return g


def raise_error(*args):
    raise RuntimeError("plugin bug")


@pytest.mark.parametrize(
    ("ops", "problem"),
    [
        (faulty(forward=raise_error), "failed in forward"),
        (faulty(backward=raise_error), "failed in backward"),
        (faulty(forward=lambda x: np.zeros(3)), "forward returned shape (3,)"),
        # Shapes that sort before the group's (1, 1): fewer axes, fewer members or rows.
        (faulty(forward=lambda x: -x[:, 0]), "forward returned shape (1,), expected (1, 1)"),
        (faulty(forward=lambda x: -x[:0]), "forward returned shape (0, 1), expected (1, 1)"),
        (faulty(backward=lambda g, y, x: (-g[:, :0],)), "backward returned shape (1, 0)"),
        (faulty(forward=lambda x: x.astype(complex)), "forward returned dtype complex128"),
        (faulty(forward=lambda x: 1.0), "forward returned float"),
        (faulty(backward=lambda g, y, x: (g, g)), "must return 1 gradient"),
        (faulty(backward=lambda g, y, x: g), "must return 1 gradient"),
    ],
)
def test_plugin_faults_become_op_failures(ops, problem):
    with pytest.raises(OpFailure) as caught:
        run(one_bad_node(), ops)
    assert caught.value.op == "bad" and caught.value.node == 1
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("op", "problem"),
    [
        (Op("bad", 1, lambda x: np.zeros(3), lambda g, y, x: (g,)), "forward returned shape"),
        (
            Op("bad", 1, np.negative, lambda g, y, x: (-g,), domain=lambda x: np.array([False])),
            "domain returned the wrong shape",
        ),
    ],
)
def test_a_fault_of_a_group_of_nodes_names_its_first_node(op, problem):
    g = GraphBuilder()
    a, b = g.leaf(1.0), g.leaf(2.0)
    g.op("bad", a)
    g.op("bad", b)  # nodes 2 and 3: one group, one call of the op
    with pytest.raises(OpFailure, match=problem) as caught:
        run(g, {"bad": op}, outputs=[2, 3])
    assert caught.value.node == 2


def test_a_wide_op_s_gradients_shared_ints_and_floats_each_reach_their_input():
    shared = np.ones((1, 1), dtype=np.int64)

    def backward(g, y, *xs):  # d/dx_i = 1 for even i (one shared int array), i * g for odd
        return tuple(shared if i % 2 == 0 else g * i for i in range(len(xs)))

    weighted = Op("weighted", None, lambda *xs: xs[0], backward)
    g = GraphBuilder()
    g.op("weighted", *[g.leaf(0.5) for _ in range(7)])
    _, grads = run(g, {"weighted": weighted})
    assert grads.dtype == np.float64
    assert grads[:7].tolist() == [1.0, 1.0, 1.0, 3.0, 1.0, 5.0, 1.0]


def test_a_bad_gradient_after_good_ones_of_the_same_op_is_an_op_failure():
    good = np.ones((1, 1))

    def backward(g, y, *xs):  # position 3 returns the wrong shape
        return tuple(np.ones(3) if i == 3 else good for i in range(len(xs)))

    g = GraphBuilder()
    g.op("bad", *[g.leaf(0.5) for _ in range(5)])
    with pytest.raises(OpFailure, match="backward returned shape"):
        run(g, {"bad": Op("bad", None, lambda *xs: xs[0], backward)})


def test_should_stop_abandons_the_evaluation(ops):
    g, _ = neuron()
    plan = compile_graph(g.arrays(), ops)
    with pytest.raises(Cancelled):
        evaluate(plan, np.array(g.leaf_values), np.array([9]), np.ones(1), lambda: True)


def test_input_outside_an_ops_domain_is_the_clients_error(ops):
    g = GraphBuilder()
    x = g.leaf(2.0)
    y = g.leaf(-1.0)
    g.op("log", x)
    g.op("log", y)
    with pytest.raises(GraphError) as caught:
        run(g, ops)
    assert caught.value.node == 3
    assert "op 'log' is not defined at (-1.0)" in str(caught.value)


@pytest.mark.parametrize("rows", [2, 3])
def test_a_domain_error_in_a_batch_names_the_row(ops, rows):
    """Of several rows, the message names the first outside the domain (one row: no row)."""
    g = GraphBuilder()
    g.op("log", g.leaf(2.0))
    plan = compile_graph(g.arrays(), ops)
    leaf_rows = np.full((rows, 1), 2.0)  # a row per evaluation, a column per leaf
    leaf_rows[rows - 1, 0] = -3.0
    with pytest.raises(GraphError) as caught:
        evaluate(plan, leaf_rows, np.array([1]), np.ones(1))
    assert f"op 'log' is not defined at (-3.0) in row {rows - 1};" in str(caught.value)


def test_domain_that_fails_is_an_op_failure(ops):
    bad = {"bad": Op("bad", 1, np.negative, lambda g, y, x: (-g,), domain=raise_error)}
    with pytest.raises(OpFailure, match="failed in forward"):
        run(one_bad_node(), bad)


def long_chain_with_fan_out(length: int) -> GraphBuilder:
    """A chain (one node per level, so the plan runs it as a Stretch) whose nodes are also
    read again further down, and which mixes unary and binary ops."""
    g = GraphBuilder()
    x, c = g.leaf(0.3), g.leaf(0.7)
    y = x
    steps = [("tanh",), ("mul", c), ("add", x), ("sin",)]
    for k in range(length):
        name, *others = steps[k % 4]
        y = g.op(name, y, *others)
    return g


def test_a_chain_runs_as_a_stretch_with_correct_gradients(ops):
    g = long_chain_with_fan_out(200)
    plan = compile_graph(g.arrays(), ops)
    assert [type(step).__name__ for step in plan.steps] == ["Stretch"]
    leaves = np.array(g.leaf_values)
    out = np.array([plan.node_count - 1])
    _, grads = evaluate(plan, leaves, out, np.ones(1))
    for k in range(2):
        h = 1e-6
        up, down = leaves.copy(), leaves.copy()
        up[k] += h
        down[k] -= h
        f_up = evaluate(plan, up, out, np.ones(1))[0][-1]
        f_down = evaluate(plan, down, out, np.ones(1))[0][-1]
        numeric = (f_up - f_down) / (2 * h)
        assert grads[k] == pytest.approx(numeric, rel=1e-6)
    # Several rows through the same stretch give each row's own single-row result.
    rows = np.array([[0.3, 0.7], [-0.2, 1.1], [0.9, -0.4]])
    batch_values, batch_grads = evaluate(plan, rows, out, np.ones(1))
    for r, row in enumerate(rows):
        single_values, single_grads = evaluate(plan, row, out, np.ones(1))
        assert batch_values[:, r] == pytest.approx(single_values, rel=1e-15)
        assert batch_grads[:, r] == pytest.approx(single_grads, rel=1e-12)


def test_a_domain_error_inside_a_stretch_names_the_first_bad_node(ops):
    g = GraphBuilder()
    y = g.leaf(-0.5)
    for _ in range(40):
        y = g.op("neg", y)  # an even number of negations: back to -0.5
    g.op("log", y)  # log(-0.5) at the end: its first bad node
    plan = compile_graph(g.arrays(), ops)
    assert isinstance(plan.steps[0], Stretch)
    with pytest.raises(GraphError) as caught:
        evaluate(plan, np.array(g.leaf_values), np.array([plan.node_count - 1]), np.ones(1))
    assert caught.value.node == plan.node_count - 1
    assert "op 'log' is not defined at (-0.5)" in str(caught.value)


def test_a_failing_op_inside_a_stretch_is_an_op_failure(ops):
    bad = {**ops, "bad": Op("bad", 1, raise_error, lambda g, y, x: (g,))}
    g = GraphBuilder()
    y = g.leaf(1.0)
    for _ in range(30):
        y = g.op("tanh", y)
    g.op("bad", y)
    with pytest.raises(OpFailure) as caught:
        run(g, bad)
    assert (caught.value.op, caught.value.node) == ("bad", 31)


@pytest.mark.parametrize("seed", range(6))
def test_rows_match_central_differences_row_by_row(ops, seed):
    # Random graphs share nodes and repeat inputs, so several rows go through the scatter
    # that sums repeated indices.
    rng = np.random.default_rng(100 + seed)
    g = random_graph(rng, leaves=4, nodes=int(rng.integers(5, 40)))
    plan = compile_graph(g.arrays(), ops)
    rows = rng.uniform(-1.5, 1.5, size=(5, len(plan.leaves)))
    out, seeds = np.array([plan.node_count - 1]), np.ones(1)
    _, grads = evaluate(plan, rows, out, seeds)
    assert grads.shape == (plan.node_count, len(rows))
    for r, row in enumerate(rows):
        for k, leaf in enumerate(plan.leaves):
            h = 1e-6 * max(1.0, abs(row[k]))
            up, down = row.copy(), row.copy()
            up[k] += h
            down[k] -= h
            numeric = (
                evaluate(plan, up, out, seeds)[0][-1] - evaluate(plan, down, out, seeds)[0][-1]
            ) / (2 * h)
            assert grads[leaf, r] == pytest.approx(numeric, rel=1e-5, abs=1e-6)


def test_rows_sum_a_shared_input_read_by_a_whole_layer(ops):
    # A layer: x is read by every product w_i * x at the same level (one group), and the
    # outputs are summed: d/dx = sum(w_i), d/dw_i = x, in every row.
    g = GraphBuilder()
    x = g.leaf(0.0)
    weights = [g.leaf(0.0) for _ in range(50)]
    products = [g.op("mul", w, x) for w in weights]
    g.op("sum", *products)
    plan = compile_graph(g.arrays(), ops)
    rng = np.random.default_rng(3)
    rows = rng.uniform(-2, 2, size=(7, 51))
    _, grads = evaluate(plan, rows, np.array([plan.node_count - 1]), np.ones(1))
    np.testing.assert_allclose(grads[x], rows[:, 1:].sum(axis=1), rtol=1e-13)
    np.testing.assert_array_equal(grads[weights].T, np.repeat(rows[:, :1], 50, axis=1))


def test_the_engine_entry_refuses_non_finite_results_unless_asked(ops):
    g = GraphBuilder()
    g.op("exp", g.leaf(1000.0))  # e^1000 overflows
    plan = compile_graph(g.arrays(), ops)
    inputs = engine_run.Inputs(np.array([1000.0]), np.array([1]), np.array([1.0]))
    with pytest.raises(GraphError, match="node 1: the op produced inf from finite inputs"):
        engine_run.run(plan, inputs)
    values, _ = engine_run.run(plan, dataclasses.replace(inputs, allow_non_finite=True))
    assert values.tolist() == [1000.0, math.inf]
