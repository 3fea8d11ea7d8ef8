"""Graphs of every shape, as arrays (quick to make at a million nodes), for the tests that
compare what the server counts (a plan's bytes, a call's estimate) with what it holds."""

import numpy as np

from gradserve.server.engine.plan import GraphArrays


def _arrays(op_names, node_ops, counts, ids, labels=()) -> GraphArrays:
    return GraphArrays(
        list(op_names),
        np.asarray(node_ops, dtype=np.uint32),
        np.asarray(counts, dtype=np.uint32),
        np.asarray(ids, dtype=np.uint32),
        list(labels),
    )


def wide_fan_in(inputs: int) -> GraphArrays:
    """``inputs`` leaves and one ``sum`` of them all, then its square (x*x: a non-linear
    output, so that Hessian-vector products are not all zero)."""
    node_ops = [0] * inputs + [1, 2]
    counts = [0] * inputs + [inputs, 2]
    return _arrays(["sum", "mul"], node_ops, counts, [*range(inputs), inputs, inputs])


def deep_chain(length: int) -> GraphArrays:
    """A leaf and ``length`` tanh nodes, each reading the one before."""
    return _arrays(["tanh"], [0] + [1] * length, [0] + [1] * length, range(length))


def mlp(width: int, layers: int) -> GraphArrays:
    """``layers`` dense tanh layers of ``width`` neurons over ``width`` inputs: per neuron
    ``width`` weights (leaves), ``width`` products, a sum and a tanh."""
    node_ops, counts, ids = [0] * width, [0] * width, []
    previous = list(range(width))
    for _ in range(layers):
        outputs = []
        for _neuron in range(width):
            weights = range(len(node_ops), len(node_ops) + width)
            node_ops += [0] * width
            counts += [0] * width
            products = range(len(node_ops), len(node_ops) + width)
            for x, w in zip(previous, weights, strict=True):
                node_ops.append(2)
                counts.append(2)
                ids += [x, w]
            node_ops.append(1)
            counts.append(width)
            ids += products
            node_ops.append(3)
            counts.append(1)
            ids.append(len(node_ops) - 2)
            outputs.append(len(node_ops) - 1)
        previous = outputs
    return _arrays(["sum", "mul", "tanh"], node_ops, counts, ids)


def labelled(nodes: int, label_length: int, fill: str = "x") -> GraphArrays:
    """A chain of ``nodes`` nodes, each with a distinct label of ``label_length`` characters
    (its number, then ``fill``)."""
    graph = deep_chain(nodes - 1)
    labels = [f"{i:08d}".ljust(label_length, fill) for i in range(nodes)]
    return GraphArrays(graph.op_names, graph.node_ops, graph.input_counts, graph.input_ids, labels)


def leaf_count(graph: GraphArrays) -> int:
    return int(np.count_nonzero(graph.node_ops == 0))


SHAPES = {
    "wide fan-in": lambda: wide_fan_in(20_000),
    "deep chain": lambda: deep_chain(20_000),
    "mlp": lambda: mlp(24, 3),
    "labelled": lambda: labelled(5_000, 200),
}
