"""Engine behaviour that only unusual ops or rows reach, found by mutation testing
(TESTING.md): each test here killed a mutant the rest of the suite let live."""

import math

import numpy as np
import pytest
from graphs import GraphBuilder

from gradserve.ops import Op
from gradserve.server.engine.errors import GraphError, OpFailure
from gradserve.server.engine.evaluate import evaluate
from gradserve.server.engine.plan import MIN_STRETCH, Stretch, compile_graph


def _chain(op: str, length: int, start: float) -> GraphBuilder:
    g = GraphBuilder()
    node = g.leaf(start)
    for _ in range(length):
        node = g.op(op, node)
    return g


def _run(g: GraphBuilder, ops: dict, rows: list[list[float]] | None = None, **options):
    plan = compile_graph(g.arrays(), ops)
    assert any(isinstance(step, Stretch) for step in plan.steps)  # the chain is a stretch
    leaves = np.array(rows if rows is not None else g.leaf_values)
    output = np.array([len(g.node_ops) - 1])
    return evaluate(plan, leaves, output, np.ones(1), **options)


def test_a_unary_scalar_that_overflows_falls_back_to_the_array_forward(ops):
    """math.exp(1e304) raises; that node of the chain is computed by np.exp (inf), and the
    fallback passes the node its one input, not two."""
    values, _ = _run(_chain("exp", MIN_STRETCH + 4, 700.0), ops, allow_non_finite=True)
    assert values[1] == math.exp(700.0)
    assert np.isposinf(values[2:]).all()


def _failing_scalar(x: float) -> float:
    raise ValueError("not on floats")


def test_a_stretch_node_computed_by_its_array_forward_is_checked_and_named(ops):
    """A scalar forward that raises hands the node to the array forward, whose bad result
    is an OpFailure naming that node."""
    bad = Op(
        "bad",
        1,
        forward=lambda x: np.zeros(3),
        backward=lambda g, y, x: (g,),
        scalar=_failing_scalar,
    )
    g = _chain("neg", MIN_STRETCH + 2, 0.5)
    g.op("bad", len(g.node_ops) - 1)
    for _ in range(3):
        g.op("neg", len(g.node_ops) - 1)
    with pytest.raises(OpFailure, match="forward returned shape") as caught:
        _run(g, {**ops, "bad": bad})
    assert caught.value.node == MIN_STRETCH + 3


def test_a_zero_dimensional_result_in_a_stretch_of_rows_is_refused(ops):
    """An op that returns a 0-d array on a stretch evaluated over several rows."""
    flat = Op("flat", 1, forward=lambda x: np.array(float(x[0])), backward=lambda g, y, x: (g,))
    g = _chain("flat", MIN_STRETCH + 2, 0.5)
    with pytest.raises(OpFailure, match=r"forward returned shape \(\), expected \(2,\)"):
        _run(g, {**ops, "flat": flat}, rows=[[0.5], [0.25]])


def test_integer_results_of_the_right_shape_are_taken_as_floats(ops):
    """A plugin's forward may return integers of the right shape (the engine converts)."""
    floor = Op(
        "floor", 1, forward=lambda x: np.floor(x).astype(np.int64), backward=lambda g, y, x: (g,)
    )
    g = GraphBuilder()
    a, b = g.leaf(2.5), g.leaf(-1.5)
    g.op("floor", a)
    g.op("floor", b)
    plan = compile_graph(g.arrays(), {**ops, "floor": floor})
    values, grads = evaluate(plan, np.array(g.leaf_values), np.array([2, 3]), np.ones(2))
    assert values.tolist() == [2.5, -1.5, 2.0, -2.0] and values.dtype == np.float64
    assert grads.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_a_domain_error_names_the_row_only_when_there_are_rows(ops):
    g = GraphBuilder()
    a, b = g.leaf(4.0), g.leaf(-1.0)
    g.op("log", a)
    g.op("log", b)  # two nodes in one group: the member is not the row
    plan = compile_graph(g.arrays(), ops)
    outputs, seeds = np.array([3]), np.ones(1)
    with pytest.raises(GraphError) as one_row:
        evaluate(plan, np.array([4.0, -1.0]), outputs, seeds)
    assert one_row.value.node == 3 and "in row" not in str(one_row.value)
    with pytest.raises(GraphError) as rows:
        evaluate(plan, np.array([[4.0, 2.0], [3.0, -1.0]]), outputs, seeds)
    assert rows.value.node == 3 and "in row 1" in str(rows.value)


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        (lambda x: np.zeros(3), r"forward returned shape \(3,\), expected \(2,\)"),
        (lambda x: np.array(["a", "b"]), "forward returned dtype <U1"),
        (lambda x: [1.0, 2.0], "forward returned list"),
    ],
)
def test_bad_results_in_a_stretch_of_rows_are_op_failures(ops, result, problem):
    odd = Op("odd", 1, forward=result, backward=lambda g, y, x: (g,))
    g = _chain("neg", MIN_STRETCH + 2, 0.5)
    g.op("odd", len(g.node_ops) - 1)
    for _ in range(3):
        g.op("neg", len(g.node_ops) - 1)
    with pytest.raises(OpFailure, match=problem) as caught:
        _run(g, {**ops, "odd": odd}, rows=[[0.5], [0.25]])
    assert caught.value.node == MIN_STRETCH + 3


def _raises(*args):
    raise RuntimeError("plugin internals")


def _group_of_three(op_name: str) -> GraphBuilder:
    """Three leaves and op_name on each: one group of three nodes (ids 3, 4, 5)."""
    g = GraphBuilder()
    for x in (1.0, 2.0, 3.0):
        g.leaf(x)
    for leaf in range(3):
        g.op(op_name, leaf)
    return g


@pytest.mark.parametrize(
    ("op", "problem"),
    [
        (Op("fails", 1, forward=_raises, backward=lambda g, y, x: (g,)), "failed in forward"),
        (Op("fails", 1, forward=np.negative, backward=_raises), "failed in backward"),
        (
            Op(
                "fails",
                1,
                forward=np.negative,
                backward=lambda g, y, x: (g,),
                domain=lambda x: np.zeros(1, dtype=bool),
            ),
            "domain returned the wrong shape",
        ),
    ],
)
def test_a_failing_group_is_reported_at_its_first_node(ops, op, problem):
    plan = compile_graph(_group_of_three("fails").arrays(), {**ops, "fails": op})
    with pytest.raises(OpFailure, match=problem) as caught:
        evaluate(plan, np.array([1.0, 2.0, 3.0]), np.array([3, 4, 5]), np.ones(3))
    assert caught.value.node == 3


def test_evaluate_passes_non_finite_numbers_unless_told_otherwise(ops):
    """The engine's default is IEEE arithmetic; the server asks for the check per request."""
    g = GraphBuilder()
    g.op("exp", g.leaf(800.0))
    plan = compile_graph(g.arrays(), ops)
    values, grads = evaluate(plan, np.array([800.0]), np.array([1]), np.ones(1))
    assert np.isposinf(values[1]) and np.isposinf(grads[0])
    with pytest.raises(GraphError, match=r"produced inf"):
        evaluate(plan, np.array([800.0]), np.array([1]), np.ones(1), allow_non_finite=False)
