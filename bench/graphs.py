"""The workloads' graphs in columnar form, built with whole-array NumPy operations.

Leaves come first (in the order the peers create their parameters), op nodes after them, so
that leaf i of a gradserve reply is parameter i of every peer.
"""

from dataclasses import dataclass

import numpy as np

from gradserve.v1 import gradserve_pb2 as pb

LEAF, ADD, MUL, TANH = 0, 1, 2, 3
OP_NAMES = ["add", "mul", "tanh"]  # node_ops k means OP_NAMES[k - 1]


@dataclass(frozen=True)
class Columns:
    """A graph as the wire's parallel arrays: one op and input count per node, inputs in CSR."""

    node_ops: np.ndarray
    input_counts: np.ndarray
    input_ids: np.ndarray
    leaf_values: np.ndarray

    @property
    def node_count(self) -> int:
        return len(self.node_ops)

    def graph(self, leaf_values: np.ndarray | None = None) -> pb.Graph:
        """The graph message, with other leaf values (any number of rows) if given."""
        values = self.leaf_values if leaf_values is None else leaf_values
        return pb.Graph(
            op_names=OP_NAMES,
            node_ops=self.node_ops,
            input_counts=self.input_counts,
            input_ids=self.input_ids,
            leaf_values=values.ravel(),
        )


def _interleave(*columns: np.ndarray) -> np.ndarray:
    """Row-major flattening of equal-length columns: a0, b0, a1, b1, ..."""
    return np.stack(columns, axis=-1).ravel()


@dataclass(frozen=True)
class MlpShape:
    """A micrograd-style MLP: `inputs` inputs, `layers` tanh layers of `width` neurons.

    Each neuron is `act = b; for w, x: act = act + w*x` then tanh, as micrograd's Neuron
    (`sum((wi*xi ...), b)`) builds it, and the loss adds the last layer's outputs left to
    right (width - 1 adds).
    """

    inputs: int
    width: int
    layers: int

    @property
    def fan_ins(self) -> list[int]:
        return [self.inputs] + [self.width] * (self.layers - 1)

    @property
    def leaf_count(self) -> int:
        return self.inputs + sum(self.width * (fan_in + 1) for fan_in in self.fan_ins)

    @property
    def node_count(self) -> int:
        ops = sum(self.width * (2 * fan_in + 1) for fan_in in self.fan_ins)
        return self.leaf_count + ops + self.width - 1

    def leaves(self, rng: np.random.Generator) -> np.ndarray:
        """Inputs in [-1, 1]; each neuron's weights, then bias, in [-1, 1] / sqrt(fan-in).

        The scaling keeps the tanh units out of saturation, so that the gradients being
        compared are not all zero.
        """
        parts = [rng.uniform(-1, 1, self.inputs)]
        for fan_in in self.fan_ins:
            parts.append(rng.uniform(-1, 1, self.width * (fan_in + 1)) / np.sqrt(fan_in))
        return np.concatenate(parts)


def mlp(shape: MlpShape, leaf_values: np.ndarray) -> Columns:
    """The MLP's columns: per layer, all products, then all running sums, then the tanhs."""
    node_ops = [np.zeros(shape.leaf_count, np.uint32)]
    counts = [np.zeros(shape.leaf_count, np.uint32)]
    inputs = []
    next_id = shape.leaf_count
    activations = np.arange(shape.inputs)
    param = shape.inputs  # id of the next parameter leaf
    for fan_in in shape.fan_ins:
        params = np.arange(param, param + shape.width * (fan_in + 1)).reshape(shape.width, -1)
        param += params.size
        weights, biases = params[:, :fan_in], params[:, fan_in]
        products = next_id + np.arange(shape.width * fan_in).reshape(shape.width, fan_in)
        sums = products + products.size
        previous = np.concatenate([biases[:, None], sums[:, :-1]], axis=1)
        x = np.broadcast_to(activations, weights.shape)
        inputs += [_interleave(weights, x), _interleave(previous, products), sums[:, -1]]
        node_ops += [np.full(products.size, MUL), np.full(sums.size, ADD)]
        node_ops.append(np.full(shape.width, TANH))
        counts += [np.full(2 * products.size, 2), np.full(shape.width, 1)]
        next_id += 2 * products.size
        activations = next_id + np.arange(shape.width)
        next_id += shape.width
    loss = next_id + np.arange(shape.width - 1)
    previous = np.concatenate([activations[:1], loss])[: shape.width - 1]
    inputs.append(_interleave(previous, activations[1:]))
    node_ops.append(np.full(shape.width - 1, ADD))
    counts.append(np.full(shape.width - 1, 2))
    return Columns(
        np.concatenate(node_ops).astype(np.uint32),
        np.concatenate(counts).astype(np.uint32),
        np.concatenate(inputs).astype(np.uint32),
        leaf_values,
    )


NEURON_SHAPE = MlpShape(inputs=2, width=1, layers=1)
# The notebook's neuron, o = tanh(x1*w1 + x2*w2 + b): x1, x2, w1, w2, b.
NEURON_LEAVES = np.array([2.0, 0.0, -3.0, 1.0, 6.8813735870195432])


def chain_links(node_count: int) -> int:
    """How many (add a constant, tanh) links a chain of ``node_count`` nodes has."""
    return (node_count - 1) // 3


def chain(links: int, leaf_values: np.ndarray) -> Columns:
    """x, then ``links`` times x = tanh(x + c_k): leaves x, c_1 .. c_k, then add/tanh pairs."""
    leaves = links + 1
    adds = leaves + 2 * np.arange(links)
    previous = np.concatenate([[0], adds[:-1] + 1])  # x, then the previous tanh
    return Columns(
        np.concatenate([np.zeros(leaves), np.tile([ADD, TANH], links)]).astype(np.uint32),
        np.concatenate([np.zeros(leaves), np.tile([2, 1], links)]).astype(np.uint32),
        np.stack([previous, np.arange(1, leaves), adds], axis=1).ravel().astype(np.uint32),
        leaf_values,
    )
