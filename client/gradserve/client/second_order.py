"""Jacobian-vector products, Hessian-vector products and Hessians: the requests and the
reading of their replies, shared by ``Client`` and ``AsyncClient``.

Each builds one EvaluateRequest with ``leaf_tangents`` (a direction per row, zero on the
leaves outside ``wrt``) and returns it with the function that reads the reply. The reply's
``value_tangents`` of the output is the JVP; the ``grad_tangents`` of ``wrt`` are the HVP
(forward-over-reverse, on the server). A Hessian over n leaves is one call of n rows whose
tangents are the one-hot vectors: row r holds H e_r.
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from gradserve.client import calls, wire
from gradserve.client.errors import Where
from gradserve.client.opcodes import LEAF
from gradserve.client.value import Value
from gradserve.v1 import gradserve_pb2 as pb

_LEAF_TANGENTS = 10  # EvaluateRequest.leaf_tangents' field number

Reader = Callable[[pb.EvaluateResponse], object]


def jvp(
    output: Value, wrt: Sequence[Value], tangent: Sequence[float], allow_non_finite: bool
) -> tuple[calls.Call, Reader]:
    """The call for d output / d wrt . tangent, and its reader (a float)."""
    call = _call(output, wrt, _directions(tangent, len(wrt), "tangent"), allow_non_finite)
    return call, lambda response: float(response.value_tangents[0])


def hvp(
    output: Value, wrt: Sequence[Value], vector: Sequence[float], allow_non_finite: bool
) -> tuple[calls.Call, Reader]:
    """The call for H . vector, H the Hessian of output with respect to wrt, and its reader
    (an array of shape (len(wrt),))."""
    call = _call(output, wrt, _directions(vector, len(wrt), "vector"), allow_non_finite)
    return call, lambda response: _grad_tangents(response, len(wrt))[0]


def hessian(
    output: Value, wrt: Sequence[Value], allow_non_finite: bool
) -> tuple[calls.Call, Reader]:
    """The call for the Hessian of output with respect to wrt, one row per Value of wrt,
    and its reader (an array of shape (n, n))."""
    n = len(wrt)
    call = _call(output, wrt, np.eye(n), allow_non_finite)
    return call, lambda response: _grad_tangents(response, n)


def _directions(vector: Sequence[float], n: int, name: str) -> np.ndarray:
    directions = np.asarray(vector, dtype=np.float64)
    if directions.shape != (n,):
        raise ValueError(f"{name} needs one number per Value of wrt ({n}), got {directions.shape}")
    return directions[None, :]


def _call(
    output: Value, wrt: Sequence[Value], directions: np.ndarray, allow_non_finite: bool
) -> calls.Call:
    """A request evaluating ``output`` at len(directions) rows of the leaves' current data,
    with row r's leaf tangents ``directions[r]`` on ``wrt`` (zero elsewhere); the selected
    nodes are the output, then ``wrt``."""
    if not isinstance(output, Value):
        raise TypeError(f"expected one output Value, got {output!r}")
    wrt = list(wrt)
    if not wrt:
        raise ValueError("wrt needs at least one leaf Value")
    for value in wrt:
        if not isinstance(value, Value) or value._tape is not None:
            raise ValueError(f"wrt must hold leaf Values (made with Value(...)), got {value!r}")
    rows = len(directions)
    batch = {wrt[0]: [wrt[0].data] * rows} if rows > 1 else None
    call = calls.evaluate_call(output, wrt, with_outputs=True, batch=batch)
    subgraph = call.subgraph
    leaves = np.flatnonzero(subgraph.codes == LEAF)
    positions = [subgraph.position(subgraph.tape.leaf_ids[value]) for value in wrt]
    tangents = np.zeros((rows, len(leaves)))
    columns = np.searchsorted(leaves, positions)
    for j, column in enumerate(columns.tolist()):
        tangents[:, column] += directions[:, j]  # a Value listed twice gets both
    flags = pb.EvaluateRequest(allow_non_finite=allow_non_finite).SerializeToString()
    request = call.request + flags + wire.packed(_LEAF_TANGENTS, wire.doubles(tangents))
    return calls.Call(request, subgraph, call.output_count)


def _grad_tangents(response: pb.EvaluateResponse, n: int) -> np.ndarray:
    """The gradient tangents of ``wrt`` (after the output), shaped (rows, n)."""
    return np.array(response.grad_tangents, dtype=np.float64).reshape(-1, 1 + n)[:, 1:]


def options(defaults: dict, timeout: float | None) -> dict:
    """The client's call options, with this call's ``timeout`` when given."""
    return defaults if timeout is None else {**defaults, "timeout": timeout}


def where(defaults: Where, timeout: float | None) -> Where:
    """What the call's errors name: the client's, with this call's ``timeout`` when given."""
    return defaults if timeout is None else dataclasses.replace(defaults, timeout=timeout)
