"""Conversions between the wire's messages and the engine's arrays."""

import numpy as np

from gradserve.server.engine import requests
from gradserve.server.engine.errors import GraphError
from gradserve.server.engine.plan import GraphArrays, Plan
from gradserve.v1 import gradserve_pb2 as pb

_SELECTIONS = frozenset(pb.Selection.values())  # the enum's values(), once: 1 us a call


def _array(field, dtype) -> np.ndarray:
    return np.array(field, dtype=dtype)  # upb containers convert in bulk, ~1 ns an entry


def graph_arrays(graph: pb.Graph) -> GraphArrays:
    """The graph's structure as arrays of its wire type, uint32: half the memory of int64,
    faster to convert, and hashed and compiled without another copy."""
    return GraphArrays(
        op_names=list(graph.op_names),
        node_ops=_array(graph.node_ops, np.uint32),
        input_counts=_array(graph.input_counts, np.uint32),
        input_ids=_array(graph.input_ids, np.uint32),
        labels=list(graph.labels),
    )


def has_structure(graph: pb.Graph) -> bool:
    """Whether the graph carries a structure (anything but leaf values)."""
    return bool(
        graph.op_names or graph.node_ops or graph.input_counts or graph.input_ids or graph.labels
    )


def leaf_rows(request: pb.EvaluateRequest, plan: Plan) -> np.ndarray:
    """The leaf values as an array of shape (rows, leaves)."""
    values = _array(request.graph.leaf_values, np.float64)
    rows = request.rows or 1
    leaves = len(plan.leaves)
    if rows > 1 and len(values) != rows * leaves:
        raise GraphError(
            f"leaf_values has {len(values)} entries; {rows} rows of {leaves} leaves need "
            f"{rows * leaves}",
            field="graph.leaf_values",
        )
    return values.reshape(rows, -1) if rows > 1 else values[None, :]


def leaf_tangent_rows(request: pb.EvaluateRequest, plan: Plan) -> np.ndarray:
    """The leaf tangents as an array of shape (rows, leaves), laid out as the leaf values."""
    given, expected = len(request.leaf_tangents), len(request.graph.leaf_values)
    if given != expected:
        raise GraphError(
            f"leaf_tangents has {given} entries; it needs one per leaf value ({expected})",
            field="leaf_tangents",
        )
    tangents = _array(request.leaf_tangents, np.float64)
    return tangents.reshape(request.rows or 1, -1)


def _check_ids(ids: np.ndarray, plan: Plan, field: str) -> None:
    bad = np.flatnonzero(ids >= plan.node_count)
    if bad.size:
        raise GraphError(
            f"{field}[{bad[0]}] = {ids[bad[0]]} is out of range "
            f"(the graph has {plan.node_count} nodes)",
            field=field,
            index=int(bad[0]),
        )


def outputs_and_seeds(request: pb.EvaluateRequest, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """The nodes to differentiate and their seed gradients, defaults applied."""
    outputs = _array(requests.outputs_or_default(request.outputs, plan.node_count), np.int64)
    if request.outputs:
        _check_ids(outputs, plan, "outputs")
    if not request.seeds:
        return outputs, np.array(requests.seeds_or_default(request.seeds, len(outputs)))
    if len(request.seeds) != len(outputs):
        raise GraphError(
            f"seeds has {len(request.seeds)} entries but there are {len(outputs)} outputs",
            field="seeds",
        )
    return outputs, _array(request.seeds, np.float64)


def selected_nodes(request: pb.EvaluateRequest, plan: Plan) -> np.ndarray:
    """The ids of the nodes whose results go back, in the order they go back."""
    selection = request.selection
    if selection not in _SELECTIONS:
        raise GraphError(f"unknown selection {selection}", field="selection")
    selection = requests.selection_of(selection, request.nodes)
    if selection == pb.SELECTION_NODES:
        nodes = _array(request.nodes, np.int64)
        _check_ids(nodes, plan, "nodes")
        return nodes
    if request.nodes:
        raise GraphError(
            f"nodes must be empty when selection is {pb.Selection.Name(selection)}",
            field="nodes",
        )
    if selection == pb.SELECTION_ALL:
        return np.arange(plan.node_count, dtype=np.int64)
    return plan.leaves  # SELECTION_LEAVES
