"""A tiny graph builder for tests, independent of the client SDK."""

import numpy as np

from gradserve.server.engine.plan import GraphArrays
from gradserve.v1 import gradserve_pb2 as pb


class GraphBuilder:
    """Appends nodes in topological order; each method returns the new node's id."""

    def __init__(self) -> None:
        self.op_names: list[str] = []
        self.node_ops: list[int] = []
        self.input_counts: list[int] = []
        self.input_ids: list[int] = []
        self.leaf_values: list[float] = []
        self.labels: list[str] = []

    def leaf(self, value: float, label: str = "") -> int:
        self.leaf_values.append(value)
        return self._node(0, (), label)

    def op(self, name: str, *inputs: int, label: str = "") -> int:
        if name not in self.op_names:
            self.op_names.append(name)
        return self._node(self.op_names.index(name) + 1, inputs, label)

    def _node(self, op_index: int, inputs, label: str) -> int:
        self.node_ops.append(op_index)
        self.input_counts.append(len(inputs))
        self.input_ids.extend(inputs)
        self.labels.append(label)
        return len(self.node_ops) - 1

    def arrays(self) -> GraphArrays:
        return GraphArrays(
            self.op_names,
            np.array(self.node_ops, dtype=np.int64),
            np.array(self.input_counts, dtype=np.int64),
            np.array(self.input_ids, dtype=np.int64),
            self.labels,
        )

    def proto(self) -> pb.Graph:
        return pb.Graph(
            op_names=self.op_names,
            node_ops=self.node_ops,
            input_counts=self.input_counts,
            input_ids=self.input_ids,
            leaf_values=self.leaf_values,
            labels=self.labels,
        )


def neuron() -> tuple[GraphBuilder, dict[str, int]]:
    """The notebook's neuron: o = tanh(x1*w1 + x2*w2 + b)."""
    g = GraphBuilder()
    ids = {}
    ids["x1"] = g.leaf(2.0, "x1")
    ids["x2"] = g.leaf(0.0, "x2")
    ids["w1"] = g.leaf(-3.0, "w1")
    ids["w2"] = g.leaf(1.0, "w2")
    ids["b"] = g.leaf(6.8813735870195432, "b")
    x1w1 = g.op("mul", ids["x1"], ids["w1"])
    x2w2 = g.op("mul", ids["x2"], ids["w2"])
    s = g.op("add", x1w1, x2w2)
    ids["n"] = g.op("add", s, ids["b"], label="n")
    ids["o"] = g.op("tanh", ids["n"], label="o")
    return g, ids


def notebook_first_example() -> tuple[GraphBuilder, dict[str, int]]:
    """c = a + b; e = c * d with a=5, b=3, d=10."""
    g = GraphBuilder()
    ids = {"a": g.leaf(5.0, "a"), "b": g.leaf(3.0, "b")}
    ids["c"] = g.op("add", ids["a"], ids["b"], label="c")
    ids["d"] = g.leaf(10.0, "d")
    ids["e"] = g.op("mul", ids["c"], ids["d"], label="e")
    return g, ids
