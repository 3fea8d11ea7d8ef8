"""Validation and scheduling of graphs (compile_graph)."""

import numpy as np
import pytest
from graphs import GraphBuilder, neuron

from gradserve.ops import Op
from gradserve.server.errors import GraphError
from gradserve.server.plan import GraphArrays, compile_graph

# A variadic op for the tests; the core distribution ships none yet.
SUM = Op(
    "sum",
    None,
    forward=lambda *xs: np.sum(xs, axis=0),
    backward=lambda g, y, *xs: tuple(g for _ in xs),
)


@pytest.fixture
def all_ops(ops):
    return {**ops, "sum": SUM}


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
def test_invalid_graphs_name_the_node_and_reason(all_ops, graph, node, field, reason):
    with pytest.raises(GraphError) as caught:
        compile_graph(graph, all_ops)
    assert caught.value.node == node
    assert caught.value.field == field
    assert reason in str(caught.value)
    if node is not None:
        assert str(caught.value).startswith(f"node {node}:")


def test_unused_unknown_op_names_are_ignored(ops):
    plan = compile_graph(arrays(["nosuch", "tanh"], [0, 2], [0, 1], [0]), ops)
    assert [g.op.name for g in plan.groups] == ["tanh"]


def test_groups_respect_dependencies_and_batch_same_level_ops(ops):
    g, _ = neuron()
    plan = compile_graph(g.arrays(), ops)
    # mul, mul at level 1 form one group; then add, add, tanh one per level.
    assert [(grp.op.name, len(grp.nodes)) for grp in plan.groups] == [
        ("mul", 2),
        ("add", 1),
        ("add", 1),
        ("tanh", 1),
    ]
    done = set(plan.leaves.tolist())
    for group in plan.groups:
        assert set(group.args.ravel().tolist()) <= done
        done |= set(group.nodes.tolist())
    assert done == set(range(plan.node_count))


def test_variadic_nodes_group_by_input_count(all_ops):
    g = GraphBuilder()
    a, b, c = g.leaf(1), g.leaf(2), g.leaf(3)
    g.op("sum", a, b)
    g.op("sum", a, b, c)
    g.op("sum", c, a)
    plan = compile_graph(g.arrays(), all_ops)
    assert sorted(grp.args.shape for grp in plan.groups) == [(2, 2), (3, 1)]
