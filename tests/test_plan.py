"""Validation and scheduling of graphs (compile_graph)."""

import dataclasses
import sys
import tracemalloc

import numpy as np
import pytest
from graphs import GraphBuilder, neuron

from bench import graphs as bench_graphs
from gradserve.server.engine import plan as plan_module
from gradserve.server.engine.errors import QUOTE_LIMIT, GraphError, quote
from gradserve.server.engine.plan import GraphArrays, compile_graph, levels_of


def arrays(op_names, node_ops, input_counts, input_ids, labels=()):
    return GraphArrays(
        op_names,
        np.array(node_ops, dtype=np.int64),
        np.array(input_counts, dtype=np.int64),
        np.array(input_ids, dtype=np.int64),
        labels,
    )


@pytest.mark.parametrize(
    ("graph", "node", "field", "reason"),
    [
        (arrays([], [], [], []), None, "graph.node_ops", "empty"),
        (arrays(["add"], [0, 0, 1], [0, 0], [0, 1]), None, "graph.input_counts", "3 nodes"),
        (arrays([], [0, 0], [0, 0], [], ["a"]), None, "graph.labels", "one per node"),
        (arrays(["add"], [0, 0, 1], [0, 0, 2], [0]), None, "graph.input_ids", "add up to 2"),
        (arrays(["add"], [0, 0, 2], [0, 0, 2], [0, 1]), 2, "graph.node_ops", "op index 2"),
        (arrays(["nosuch"], [0, 1], [0, 1], [0]), 1, "graph.op_names", "unknown op 'nosuch'"),
        (arrays(["add"], [0, 0, 1], [0, 0, 1], [0]), 2, "graph.input_counts", "takes 2"),
        (arrays(["tanh"], [0, 1], [0, 2], [0, 0]), 1, "graph.input_counts", "takes 1"),
        (arrays(["sum"], [0, 1], [0, 0], []), 1, "graph.input_counts", "one or more"),
        (arrays([], [0, 0], [0, 1], [0]), 1, "graph.input_counts", "a leaf"),
        (arrays(["tanh"], [0, 1], [0, 1], [7]), 1, "graph.input_ids", "out of range"),
        (arrays(["tanh"], [0, 1, 1], [0, 1, 1], [2, 0]), 1, "graph.input_ids", "not earlier"),
        (arrays(["tanh"], [0, 1], [0, 1], [1]), 1, "graph.input_ids", "not earlier"),
    ],
    ids=[
        "empty",
        "counts-length",
        "labels-length",
        "counts-sum",
        "op-index",
        "unknown-op",
        "too-few-inputs",
        "too-many-inputs",
        "variadic-without-inputs",
        "leaf-with-inputs",
        "id-out-of-range",
        "forward-reference",
        "self-reference",
    ],
)
def test_invalid_graphs_name_the_node_and_reason(ops, graph, node, field, reason):
    with pytest.raises(GraphError) as caught:
        compile_graph(graph, ops)
    assert caught.value.node == node
    assert caught.value.field == field
    assert reason in str(caught.value)
    if node is not None:
        assert str(caught.value).startswith(f"node {node}:")


def wire_arrays(op_names, node_ops, input_counts, input_ids):
    """Arrays of the wire's type, uint32, as the servicer hands them to compile_graph."""
    return GraphArrays(
        op_names,
        np.array(node_ops, dtype=np.uint32),
        np.array(input_counts, dtype=np.uint32),
        np.array(input_ids, dtype=np.uint32),
    )


@pytest.mark.parametrize(
    ("graph", "node", "field", "reason"),
    [
        # Values that int32 cannot hold: they would wrap to negative ids if converted blindly.
        (wire_arrays(["tanh"], [0, 1], [0, 1], [2**31]), None, "graph.input_ids", "2147483648"),
        (wire_arrays(["tanh"], [0, 1], [0, 1], [2**32 - 1]), None, "graph.input_ids", "4294967295"),
        (wire_arrays(["tanh"], [0, 2**31 + 1], [0, 1], [0]), 1, "graph.node_ops", "2147483649"),
        (wire_arrays(["tanh"], [0, 1], [0, 2**32 - 1], [0]), 1, "graph.input_counts", "4294967295"),
        (arrays(["tanh"], [0, 1], [0, 1], [-1]), None, "graph.input_ids", "input_ids[0] = -1 "),
        # The largest id int32 holds passes the conversion and is then out of this graph.
        (
            wire_arrays(["tanh"], [0, 1], [0, 1], [2**31 - 1]),
            1,
            "graph.input_ids",
            "input id 2147483647 is out of range (the graph has 2 nodes)",
        ),
    ],
    ids=["id-2**31", "id-2**32-1", "op-index-2**31+1", "count-2**32-1", "id-negative", "id-max"],
)
def test_ids_near_the_int32_limit_are_refused_with_their_value(ops, graph, node, field, reason):
    with pytest.raises(GraphError) as caught:
        compile_graph(graph, ops)
    assert (caught.value.node, caught.value.field) == (node, field)
    assert reason in str(caught.value)
    assert "out of range" in str(caught.value)


def test_graphs_larger_than_int32_ids_allow_are_refused(ops, monkeypatch):
    monkeypatch.setattr(plan_module, "_MAX_ID", 3)
    with pytest.raises(GraphError, match="at most 3 of each"):
        compile_graph(arrays(["tanh"], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 2]), ops)


def test_compiling_takes_under_80_bytes_a_node_beyond_the_wire_arrays(ops):
    """Ids as int32 (the wire's uint32 read in place), temporaries freed early: about 47
    bytes a node at the peak, plan included, for an MLP; with int64 ids it was 168."""
    shape = bench_graphs.MlpShape(30, 30, 3)
    columns = bench_graphs.mlp(shape, np.zeros(shape.leaf_count))
    graph = GraphArrays(
        bench_graphs.OP_NAMES, columns.node_ops, columns.input_counts, columns.input_ids
    )
    tracemalloc.start()
    try:
        plan = compile_graph(graph, ops)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plan.node_count == shape.node_count
    assert peak / shape.node_count < 80


def test_unused_unknown_op_names_are_refused(ops):
    with pytest.raises(GraphError) as caught:
        compile_graph(arrays(["tanh", "nosuch"], [0, 1], [0, 1], [0]), ops)
    assert (caught.value.field, caught.value.index, caught.value.node) == (
        "graph.op_names",
        1,
        None,
    )
    assert "unknown op 'nosuch'" in str(caught.value) and "used by no node" in str(caught.value)


def test_an_op_name_listed_twice_is_refused(ops):
    with pytest.raises(GraphError) as caught:
        compile_graph(arrays(["tanh", "add", "tanh"], [0, 1, 3], [0, 1, 1], [0, 1]), ops)
    assert (caught.value.field, caught.value.index, caught.value.node) == (
        "graph.op_names",
        2,
        None,
    )
    assert "'tanh' twice (at 0 and 2)" in str(caught.value)


def test_known_but_unused_op_names_are_allowed(ops):
    plan = compile_graph(arrays(["add", "tanh"], [0, 2], [0, 1], [0]), ops)
    assert [g.op.name for g in plan.steps] == ["tanh"]


def test_groups_respect_dependencies_and_batch_same_level_ops(ops):
    g, _ = neuron()
    plan = compile_graph(g.arrays(), ops)
    # mul, mul at level 1 form one group; then add, add, tanh one per level.
    assert [(grp.op.name, len(grp.nodes)) for grp in plan.steps] == [
        ("mul", 2),
        ("add", 1),
        ("add", 1),
        ("tanh", 1),
    ]
    done = set(plan.leaves.tolist())
    for group in plan.steps:
        assert set(group.args.ravel().tolist()) <= done
        done |= set(group.nodes.tolist())
    assert done == set(range(plan.node_count))


def test_variadic_nodes_group_by_input_count(ops):
    g = GraphBuilder()
    a, b, c = g.leaf(1), g.leaf(2), g.leaf(3)
    g.op("sum", a, b)
    g.op("sum", a, b, c)
    g.op("sum", c, a)
    plan = compile_graph(g.arrays(), ops)
    assert sorted(grp.args.shape for grp in plan.steps) == [(2, 2), (3, 1)]


def reference_levels(g: GraphBuilder) -> list[int]:
    """Levels by the definition, one node at a time (ids are topological)."""
    levels, position = [], 0
    for count in g.input_counts:
        inputs = g.input_ids[position : position + count]
        position += count
        levels.append(1 + max(levels[i] for i in inputs) if inputs else 0)
    return levels


def chain_with_branches(rng: np.random.Generator, nodes: int) -> GraphBuilder:
    """Mostly links (one op-node input plus leaves), with joins of older nodes."""
    g = GraphBuilder()
    g.leaf(0.5)
    for _ in range(nodes):
        n = len(g.node_ops)
        kind = rng.integers(4)
        if kind == 0:
            g.op("tanh", n - 1)
        elif kind == 1:
            g.op("add", n - 1, g.leaf(1.0))
        elif kind == 2:
            g.op("mul", int(rng.integers(n)), int(rng.integers(n)))
        else:
            g.op("mul", n - 1, n - 1)
    return g


def levels(g: GraphBuilder) -> list[int]:
    a = g.arrays()
    offsets = np.concatenate([[0], np.cumsum(a.input_counts)])
    owners = np.repeat(np.arange(len(a.node_ops)), a.input_counts)
    return levels_of(a.node_ops != 0, a.input_counts, offsets, a.input_ids, owners).tolist()


@pytest.mark.parametrize("seed", range(8))
def test_levels_match_the_definition(seed):
    g = chain_with_branches(np.random.default_rng(seed), 3000)
    assert levels(g) == reference_levels(g)


def test_a_pure_chain_collapses_to_one_pass(monkeypatch):
    g = GraphBuilder()
    y = g.leaf(0.5)
    for k in range(20_000):
        y = g.op("tanh", y) if k % 2 else g.op("add", y, g.leaf(0.1))
    monkeypatch.setattr(plan_module, "_levels_in_id_order", None)  # must not be needed
    assert levels(g) == reference_levels(g)


def test_deep_graphs_without_chains_take_the_per_node_pass(monkeypatch):
    g = ladder(6000)
    fallbacks = count_per_node_passes(monkeypatch)
    assert levels(g) == reference_levels(g)
    assert fallbacks == [1]


def ladder(nodes: int) -> GraphBuilder:
    """Two leaves, then nodes that each read the two before them: deep without chains, so
    each pass of Kahn's algorithm would see one node."""
    g = GraphBuilder()
    g.leaf(1.0)
    g.leaf(1.0)
    for n in range(2, nodes):
        g.op("add", n - 1, n - 2)
    return g


def count_per_node_passes(monkeypatch) -> list[int]:
    """A list that gets an entry each time the levels fall back to the per-node pass."""
    fallbacks = []
    per_node = plan_module._levels_in_id_order
    monkeypatch.setattr(
        plan_module,
        "_levels_in_id_order",
        lambda *args: fallbacks.append(1) or per_node(*args),
    )
    return fallbacks


def stop_check_callers(ops, g: GraphBuilder) -> list[str]:
    """The functions on the stack, up to a few frames up, whenever the stop check was
    polled while ``g`` was compiled."""
    callers = []

    def should_stop() -> bool:
        frame = sys._getframe(1)
        for _ in range(4):  # the check's own helpers, then the loop that polled
            callers.append(frame.f_code.co_name)
            frame = frame.f_back
        return False

    compile_graph(g.arrays(), ops, should_stop)
    return callers


def test_the_per_node_pass_takes_the_deepest_input_of_any_count(monkeypatch):
    """The per-node pass on a deep graph without chains whose nodes read one input (tanh),
    two or three (a sum), the deepest of them last: every count's branch of that pass."""
    g = GraphBuilder()
    for _ in range(3):
        g.leaf(1.0)
    for n in range(3, 9000):
        kind = n % 3
        if kind == 0:
            g.op("add", n - 2, n - 1)
        elif kind == 1:
            g.op("tanh", n - 1)
        else:
            g.op("sum", n - 3, n - 2, n - 1)
    fallbacks = count_per_node_passes(monkeypatch)
    assert levels(g) == reference_levels(g)
    assert fallbacks == [1]


def test_compiling_polls_the_stop_check_in_the_per_node_pass_too(ops):
    """A deep graph's per-node levels pass is a Python loop: it must poll the stop check, or
    a cancelled compilation of millions of nodes would go on to its end."""
    assert "_levels_in_id_order" in stop_check_callers(ops, ladder(6000))


def test_of_several_bad_inputs_the_first_is_named(ops):
    """Two nodes read forward: the error names the earlier one, and its entry of input_ids."""
    g = GraphBuilder()
    a = g.leaf(1.0)
    g.op("neg", a)
    g.op("neg", a)
    g.op("neg", a)
    g.input_ids[1] = 2  # node 2 reads itself
    g.input_ids[2] = 3  # node 3 reads itself
    with pytest.raises(GraphError) as caught:
        compile_graph(g.arrays(), ops)
    assert (caught.value.node, caught.value.index) == (2, 1)


def test_scheduling_polls_the_stop_check_between_its_groups(ops):
    """Building the steps of a graph with many groups polls the stop check too."""
    g = chain_with_branches(np.random.default_rng(0), 3000)
    assert "_schedule" in stop_check_callers(ops, g)


@pytest.mark.parametrize("extra", [-1, 1])
def test_input_counts_must_have_exactly_one_entry_per_node(ops, extra):
    """One count too few or too many: a GraphError naming the field, never a crash."""
    g = GraphBuilder()
    a = g.leaf(1.0)
    g.op("neg", a)
    arrays = g.arrays()
    counts = arrays.input_counts
    counts = counts[:extra] if extra < 0 else np.concatenate([counts, [0]]).astype(counts.dtype)
    with pytest.raises(GraphError) as caught:
        compile_graph(dataclasses.replace(arrays, input_counts=counts), ops)
    assert caught.value.field == "graph.input_counts"
    assert "one per node" in str(caught.value)


def test_input_ids_must_have_as_many_entries_as_the_counts_add_up_to(ops):
    """An input id too many: a GraphError naming the field, never a crash."""
    g = GraphBuilder()
    a = g.leaf(1.0)
    g.op("neg", a)
    arrays = g.arrays()
    ids = np.concatenate([arrays.input_ids, [0]]).astype(arrays.input_ids.dtype)
    with pytest.raises(GraphError) as caught:
        compile_graph(dataclasses.replace(arrays, input_ids=ids), ops)
    assert caught.value.field == "graph.input_ids"
    assert "add up to 1" in str(caught.value)


def test_a_plan_is_isolated_when_it_applies_an_isolated_op(ops):
    """Isolation is a property of the ops (Op.isolated, set by the server for untrusted
    ones), not of how the plan was made: a plan applying one runs in the workers and never
    on the small-call path."""
    from gradserve.server.engine.small_call import program_of

    g = GraphBuilder()
    x = g.leaf(0.5)
    g.op("tanh", g.op("mul", x, x))
    trusted = compile_graph(g.arrays(), ops)
    isolated_ops = {**ops, "tanh": dataclasses.replace(ops["tanh"], isolated=True)}
    isolated = compile_graph(g.arrays(), isolated_ops)
    assert not trusted.isolated and program_of(trusted) is not None
    assert isolated.isolated and program_of(isolated) is None


def test_a_plan_keeps_a_long_label_s_first_characters_and_its_length(ops):
    """A label a message would quote whole is kept as sent; a longer one only as far as a
    message quotes it (QUOTE_LIMIT characters), with its length: a plan cached for hours
    does not hold a megabyte label."""
    lengths = [0, 10, QUOTE_LIMIT, QUOTE_LIMIT + 1, 1_000_000]
    g = GraphBuilder()
    for n in lengths:
        g.leaf(1.0, "x" * n)
    plan = compile_graph(g.arrays(), ops)
    for label, kept in zip(g.labels, plan.labels, strict=True):
        if len(label) <= QUOTE_LIMIT:
            assert kept is label
        else:
            assert (str(kept), kept.length) == (label[:QUOTE_LIMIT], len(label))
            assert quote(kept) == f"{label[:QUOTE_LIMIT] + '…'!r} ({len(label)} characters)"
