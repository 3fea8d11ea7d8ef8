"""What the sync and async clients share: building requests from Values, reading results."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gradserve.client import structure, wire
from gradserve.client.opcodes import LEAF
from gradserve.client.subgraph import Subgraph
from gradserve.client.tape import CONSTANT, tape_of
from gradserve.client.value import Value
from gradserve.v1 import gradserve_pb2 as pb

STREAM_ABOVE = 65_536  # backward streams results of more nodes, so a progress bar can show
_GRAPH = 1  # EvaluateRequest.graph's field number


@dataclass(frozen=True)
class Evaluation:
    """Results of ``Client.evaluate``: the outputs' values, and for each Value in ``wrt``
    its value and the gradient of the (seeded) outputs with respect to it.

    With a ``batch`` of B rows, ``outputs``, ``values`` and ``grads`` have a leading axis of
    length B: ``grads[r, j]`` is the gradient at row r with respect to ``wrt[j]``.
    """

    outputs: np.ndarray
    wrt: list[Value]
    values: np.ndarray
    grads: np.ndarray


@dataclass(frozen=True)
class Chunk:
    """One chunk of ``Client.stream``: ``nodes[i]`` has value ``values[i]``, gradient
    ``grads[i]``; ``total`` is the number of nodes across the whole stream."""

    nodes: list[Value]
    values: np.ndarray
    grads: np.ndarray
    total: int


@dataclass(frozen=True)
class Call:
    """A prepared request, serialized (see ``channel.serialized_calls``), and what is needed
    to read its results."""

    request: bytes
    subgraph: Subgraph
    output_count: int = 0


def _as_list(values: Value | Sequence[Value]) -> list[Value]:
    values = [values] if isinstance(values, Value) else list(values)
    for value in values:
        if not isinstance(value, Value):
            raise TypeError(f"expected Values, got {value!r}")
    return values


def backward_call(loss: Value) -> Call:
    """Every node the loss depends on, differentiated from the loss, all results back."""
    if not isinstance(loss, Value):
        raise TypeError(f"backward needs a Value, got {loss!r}")
    call = evaluate_call(loss, wrt="all")
    call.subgraph.tape.results = None  # an earlier backward's results are stale
    return call


def evaluate_call(
    outputs, wrt=None, seeds=None, *, with_outputs=False, chunk_size=0, batch=None
) -> Call:
    """``wrt``: a list of Values, None for the graph's leaves, or "all" for every node.

    With ``with_outputs`` the outputs' own results come first (``Call.output_count`` of them).
    ``batch`` maps leaf Values to sequences of B values: the graph is evaluated at B rows, the
    other leaves keeping their ``.data`` in every row.
    """
    outputs = _as_list(outputs)
    if not outputs:
        raise ValueError("evaluate needs at least one output")
    tape = tape_of(outputs)
    roots = [tape.leaf_id(v) if v._tape is None else v._id for v in outputs]
    subgraph = tape.subgraph(roots)
    tape.sent = True
    fields = pb.EvaluateRequest(
        outputs=[subgraph.position(r) for r in roots],
        seeds=[] if seeds is None else [float(s) for s in seeds],
        chunk_size=chunk_size,
    )
    leaf_values = subgraph.leaf_values()
    if batch:
        leaf_values = _rows(subgraph, tape, batch, leaf_values)
        fields.rows = len(leaf_values)
    if wrt == "all":
        fields.selection = pb.SELECTION_ALL
    else:
        fields.selection = pb.SELECTION_NODES
        if with_outputs:
            fields.nodes.extend(fields.outputs)
        fields.nodes.extend(_positions(wrt, subgraph, tape))
    request = fields.SerializeToString() + wire.message(_GRAPH, subgraph.graph(leaf_values))
    request = structure.structured(request, subgraph.digest)  # for routing by structure
    return Call(request, subgraph, output_count=len(outputs) if with_outputs else 0)


def _positions(wrt, subgraph: Subgraph, tape) -> list[int]:
    """The positions of the Values ``wrt`` in the sent graph (None: the user's leaves, not
    the constants the SDK made from numbers)."""
    if wrt is None:
        leaves = np.flatnonzero(subgraph.codes == LEAF)
        values = subgraph.values(leaves)
        return [p for p, v in zip(leaves.tolist(), values, strict=True) if v._id != CONSTANT]
    ids = [tape.leaf_ids.get(v) if v._tape is None else v._id for v in _as_list(wrt)]
    positions = [None if i is None else subgraph.position(i) for i in ids]
    if None in positions:
        raise ValueError("wrt holds a Value the outputs do not depend on")
    return positions


def _rows(subgraph: Subgraph, tape, batch, leaf_values: np.ndarray) -> np.ndarray:
    """The leaf values row by row: ``leaf_values`` in each, with the columns of ``batch``."""
    columns = {}
    for value, column in batch.items():
        position = subgraph.position(tape.leaf_ids.get(value, -1)) if value._tape is None else None
        if position is None:
            raise ValueError(f"batch holds {value!r}, which is not a leaf the outputs depend on")
        columns[position] = np.asarray(column, dtype=np.float64)
    lengths = {len(column) for column in columns.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError("every batch entry must hold the same, non-zero number of values")
    leaves = np.flatnonzero(subgraph.codes == LEAF)
    rows = np.tile(leaf_values, (lengths.pop(), 1))
    for position, column in columns.items():
        rows[:, np.searchsorted(leaves, position)] = column
    return rows


def fill(subgraph: Subgraph, messages: list) -> None:
    """Set ``.data`` and ``.grad`` of the sent nodes' Values that still exist from a call's
    result messages (an EvaluateResponse, or a stream's GradientChunks), all at once."""
    columns = zip(*map(arrays, messages), strict=True)  # ids, values, grads
    subgraph.fill(*(np.concatenate(column) for column in columns))


def arrays(message) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.array(message.node_ids, dtype=np.int64),
        np.array(message.values, dtype=np.float64),
        np.array(message.grads, dtype=np.float64),
    )


def evaluation(call: Call, response: pb.EvaluateResponse) -> Evaluation:
    ids, values, grads = arrays(response)
    if response.rows > 1:  # row by row on the wire
        values, grads = values.reshape(response.rows, -1), grads.reshape(response.rows, -1)
    k = call.output_count
    return Evaluation(
        outputs=values[..., :k],
        wrt=call.subgraph.values(ids[k:]),
        values=values[..., k:],
        grads=grads[..., k:],
    )


def chunk(call: Call, message: pb.GradientChunk) -> Chunk:
    ids, values, grads = arrays(message)
    return Chunk(call.subgraph.values(ids), values, grads, message.total_nodes)
