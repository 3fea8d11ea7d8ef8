"""The engine's one entry (``engine.run.Engine``): which path a call takes is decided there,
and what it tells the service about a call's cost matches what the call then does."""

import numpy as np
import pytest
from graphs import GraphBuilder, neuron

from gradserve.server.engine import run as engine_entry
from gradserve.server.engine import small_call
from gradserve.server.engine.plan_cache import PlanCache, structure_digest
from gradserve.server.engine.run import Cost, Engine, Inputs
from gradserve.server.service import evaluation
from gradserve.v1 import gradserve_pb2 as pb


def never() -> bool:
    return False


def planned(engine: Engine, g: GraphBuilder):
    digest = structure_digest(g.arrays())
    return engine.compile(digest, g.arrays(), never), digest


def sines(count: int) -> GraphBuilder:
    g = GraphBuilder()
    y = g.leaf(0.5)
    for _ in range(count):
        y = g.op("sin", y)
    return g


class Workers:
    """Isolation workers that run ``run`` here and count their calls."""

    def __init__(self, untrusted, ops) -> None:
        self.untrusted = frozenset(untrusted)
        self.ops = ops
        self.calls = 0

    def run(self, graph, inputs, should_stop):
        self.calls += 1
        return engine_entry.run(engine_entry.compile_graph(graph, self.ops), inputs)


def test_the_cost_of_an_answer_says_where_it_may_run(ops):
    engine = Engine(ops, PlanCache(2**30))
    g, _ = neuron()
    plan, digest = planned(engine, g)
    request = pb.EvaluateRequest(graph=g.proto())
    assert engine.cost(plan, request) is Cost.QUICK  # up to LOOP_NODES: a loop from the start
    assert engine.answer(plan, digest, request, never) is not None
    two_rows = pb.EvaluateRequest(graph=g.proto(), rows=2)
    with_tangents = pb.EvaluateRequest(graph=g.proto(), leaf_tangents=[1.0] * 5)
    for declined in (two_rows, with_tangents):
        assert engine.cost(plan, declined) is Cost.NONE
        assert engine.answer(plan, digest, declined, never) is None

    long = sines(small_call.LOOP_NODES + 10)
    plan, digest = planned(engine, long)
    request = pb.EvaluateRequest(graph=long.proto())
    assert engine.cost(plan, request) is Cost.SLOW  # its second call compiles
    assert engine.answer(plan, digest, request, never) is None  # first call: the arrays
    assert engine.cost(plan, request) is Cost.SLOW
    compiled = engine.answer(plan, digest, request, never)
    assert compiled is not None and engine.cost(plan, request) is Cost.QUICK
    assert compiled.grads[0] == pytest.approx(np.prod(np.cos(compiled.values[:-1])))


def test_a_large_selection_is_answered_on_a_thread(ops):
    """A small graph selecting a node many times is not answered on the event loop: the
    answer walks every selected id (abusers' never-read streams select node 0 a million
    times, which held the loop for a quarter of a second each)."""
    engine = Engine(ops, PlanCache(2**30))
    g = GraphBuilder()
    x = g.leaf(0.5)
    g.op("sin", x)
    plan, digest = planned(engine, g)
    limit = engine_entry.QUICK_SELECTED_NODES
    at_limit = pb.EvaluateRequest(graph=g.proto(), nodes=[1] * limit)
    over = pb.EvaluateRequest(graph=g.proto(), nodes=[1, 0] * (limit // 2) + [1])
    assert engine.cost(plan, at_limit) is Cost.QUICK
    assert engine.cost(plan, over) is Cost.SLOW
    answer = engine.answer(plan, digest, over, never)  # still answered, on a thread
    assert answer is not None
    reply = pb.EvaluateResponse.FromString(evaluation.answer_reply(answer, digest))
    assert list(reply.node_ids) == list(over.nodes)
    assert list(reply.values[:2]) == [pytest.approx(np.sin(0.5)), 0.5]
    assert list(reply.grads[:2]) == [1.0, pytest.approx(np.cos(0.5))]


def test_an_isolated_plan_goes_to_the_workers_and_only_there(ops):
    workers = Workers({"sin"}, ops)
    engine = Engine(ops, PlanCache(2**30), workers)
    assert engine.ops["sin"].isolated and not engine.ops["tanh"].isolated
    g = sines(3)
    plan, digest = planned(engine, g)
    assert plan.isolated and plan.source is not None
    request = pb.EvaluateRequest(graph=g.proto())
    assert engine.cost(plan, request) is Cost.NONE
    inputs = Inputs(np.array([[0.5]]), np.array([3]), np.array([1.0]))
    values, grads = engine.evaluate(plan, digest, inputs, never)
    assert workers.calls == 1
    assert values[3, 0] == pytest.approx(np.sin(np.sin(np.sin(0.5))), rel=1e-15)
    assert grads[0, 0] == pytest.approx(np.prod(np.cos(values[:3, 0])), rel=1e-15)

    idle = Workers({"sin"}, ops)
    trusted = Engine(ops, PlanCache(2**30), idle)
    g = GraphBuilder()
    g.op("tanh", g.leaf(0.5))
    plan, digest = planned(trusted, g)
    assert not plan.isolated and plan.source is None
    trusted.evaluate(plan, digest, Inputs(np.array([[0.5]]), np.array([1]), np.array([1.0])), never)
    assert idle.calls == 0
