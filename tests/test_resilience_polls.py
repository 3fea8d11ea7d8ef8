"""Every engine loop over nodes, inputs or tangents polls the stop check (issue 19, finding
3): a wide op's results checked one by one, its second-derivative pairs, a plan's sizes
counted while compiling. Each test counts the work done after the stop check first said
stop: at most one poll interval of it, never the rest of the loop. (The per-step,
per-stretch and per-tangent loops have theirs in test_engine*.py, test_plan.py and
test_scalar_stretch.py.)"""

import sys

import numpy as np
import pytest
from graphs import GraphBuilder

from gradserve.ops import Op
from gradserve.server.engine import op_calls, second_order
from gradserve.server.engine.errors import Cancelled
from gradserve.server.engine.evaluate import evaluate
from gradserve.server.engine.plan import compile_graph
from gradserve.server.engine.second_order import evaluate_with_tangents


class Work:
    """A counter of work, and a stop check that says stop once ``limit`` is done: the
    stop is asked from then on, and ``after`` is the work done since."""

    def __init__(self, limit: int) -> None:
        self.done = 0
        self.limit = limit

    def should_stop(self) -> bool:
        return self.done >= self.limit

    @property
    def after(self) -> int:
        return self.done - self.limit


def _wide(op_name: str, inputs: int) -> GraphBuilder:
    g = GraphBuilder()
    g.op(op_name, *[g.leaf(0.5) for _ in range(inputs)])
    return g


def test_a_wide_op_s_backward_results_are_checked_with_stop_checks(ops, monkeypatch):
    """An op of 3 x 65,536 inputs returns as many gradient arrays, each checked: a stop
    asked after the first 1,000 ends the checks within POLL_POSITIONS more. (Each is an
    array of its own: one array returned for every position, as a sum's, is checked once.)"""
    inputs = 3 * op_calls.POLL_POSITIONS
    wide = Op("wide", None, lambda *xs: xs[0], lambda g, y, *xs: tuple(g.copy() for _ in xs))
    plan = compile_graph(_wide("wide", inputs).arrays(), {**ops, "wide": wide})
    work = Work(limit=1_000)
    check = op_calls.checked

    def counted(group, result, phase, shape):
        work.done += phase == "backward"
        return check(group, result, phase, shape)

    monkeypatch.setattr(op_calls, "checked", counted)
    with pytest.raises(Cancelled):
        evaluate(plan, np.full(inputs, 0.5), np.array([inputs]), np.ones(1), work.should_stop)
    assert 0 <= work.after <= op_calls.POLL_POSITIONS < inputs - work.limit


class CountedArray(np.ndarray):
    """A second derivative that counts the products taken of it."""

    work: Work

    def __mul__(self, other):
        CountedArray.work.done += 1
        return np.multiply(self.view(np.ndarray), other)


def test_a_wide_op_s_second_derivative_pairs_stop_soon_after_a_stop(ops):
    """An op of 400 inputs has 80,200 pairs of second derivatives, each taken times two
    tangents: a stop asked after 1,000 products ends the pairs within a poll interval
    (every _POLL_INPUTS pairs), not after all 160,400 products."""
    inputs = 400
    pairs = inputs * (inputs + 1) // 2
    work = Work(limit=1_000)
    CountedArray.work = work

    def second(y, *xs):
        return tuple(np.ones(y.shape).view(CountedArray) for _ in range(pairs))

    wide = Op("wide", None, lambda *xs: sum(xs), lambda g, y, *xs: (g,) * len(xs), second=second)
    plan = compile_graph(_wide("wide", inputs).arrays(), {**ops, "wide": wide})
    x, t = np.full(inputs, 0.5), np.ones(inputs)
    with pytest.raises(Cancelled):
        evaluate_with_tangents(plan, x, t, np.array([inputs]), np.ones(1), work.should_stop)
    assert 0 <= work.after <= 2 * second_order._POLL_INPUTS < 2 * pairs - work.limit


def test_compiling_counts_a_plan_s_sizes_with_stop_checks(ops):
    """The plan's sizes (what the memory estimate reads) are counted over its steps while
    compiling, where a stop check can end it, not later on the server's event loop: a
    stop asked there ends the compilation before any more steps are counted."""
    g = GraphBuilder()
    a, b = g.leaf(1.0), g.leaf(2.0)
    for _ in range(2_000):  # two nodes of one op a level: 2,000 groups
        a, b = g.op("mul", a, b), g.op("mul", b, a)

    def should_stop() -> bool:  # polled through the check's helpers, then the loop
        return "_sizes" in {sys._getframe(depth).f_code.co_name for depth in range(1, 5)}

    with pytest.raises(Cancelled):
        compile_graph(g.arrays(), ops, should_stop)
    plan = compile_graph(g.arrays(), ops)
    assert len(plan.steps) >= 2_000
    assert (plan.sizes.nodes, plan.sizes.edges, plan.sizes.positions) == (4_002, 8_000, 4_000)
