"""A Train stream's answer, its result arrays read by NumPy straight from the answer's bytes.

Protobuf hands a repeated field to Python as a container of Python objects, and NumPy
builds an array from it element by element: about 17 µs of a 398-node training step went to
the three arrays. A packed repeated field and a ``bytes`` field share their wire form (a
length-delimited field), so protobuf itself parses the reply here with a twin of
``TrainResponse`` whose ``EvaluateResponse`` declares ``node_ids``, ``values`` and ``grads``
as bytes: the doubles are then ``np.frombuffer`` of them.

That reading is used only where it is exact: n values, n gradients and node ids 0, 1, ...,
n - 1 (a backward's answer), checked by comparing their bytes with those ids' encoding. Any
other answer (a selection of nodes, rows, a field split in pieces or not packed, which
protobuf allows) is parsed again whole by the generated ``TrainResponse``.
"""

import functools

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1.wire_format import packed_varints

_AS_BYTES = ("node_ids", "values", "grads")
# Larger answers are parsed whole at once: encoding their ids 0..n-1 to compare would cost
# more than the arrays save (812,399 nodes: 19 ms against 27 ms for the whole answer). An
# answer this long has at most 65,536 nodes (16 bytes of results each).
_TWIN_UP_TO_BYTES = 1 << 20


def _twin() -> type:
    """``TrainResponse`` with ``_AS_BYTES`` of its ``EvaluateResponse`` as bytes fields."""
    package = "gradserve.client.replies"
    file = descriptor_pb2.FileDescriptorProto(
        name="gradserve/client/replies.proto", package=package, syntax="proto3"
    )
    evaluate = file.message_type.add()
    pb.EvaluateResponse.DESCRIPTOR.CopyToProto(evaluate)
    for field in evaluate.field:
        if field.name in _AS_BYTES:
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
            field.label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
            field.ClearField("options")
    train = file.message_type.add()
    pb.TrainResponse.DESCRIPTOR.CopyToProto(train)
    for field in train.field:
        if field.name == "response":
            field.type_name = f".{package}.{evaluate.name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{train.name}"))


_TrainTwin = _twin()


class Results:
    """An EvaluateResponse read from a Train stream's answer: ``plan_digest``, ``rows``,
    and ``arrays()`` (node ids, values, gradients)."""

    def __init__(self, raw: bytes, twin) -> None:
        self._raw = raw
        self._twin = twin
        self.plan_digest = twin.plan_digest
        self.rows = twin.rows

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Node ids (int64, read-only), values and gradients (float64, the caller's) read from
        the answer's bytes; None when that would not be exact (then read ``whole()``)."""
        twin = self._twin
        values, grads = twin.values, twin.grads  # each read of a bytes field is a new copy
        n = len(values) // 8
        # n ids for n values: one row (rows of n ids would hold rows * n values).
        if len(values) != len(grads) or len(values) != 8 * n:
            return None
        encoded, ids = _cached_ids(n)
        if twin.node_ids != encoded:
            return None
        return (
            ids,
            np.frombuffer(values, dtype="<f8").astype(np.float64),  # a copy
            np.frombuffer(grads, dtype="<f8").astype(np.float64),
        )

    def whole(self) -> pb.EvaluateResponse:
        """The answer parsed whole by the generated message."""
        return pb.TrainResponse.FromString(self._raw).response


@functools.lru_cache(maxsize=4)  # a training loop's few structures: at most ~2.8 MB in all
def _cached_ids(n: int) -> tuple[bytes, np.ndarray]:
    """The packed encoding of the node ids 0, ..., ``n`` - 1, and those ids (read-only:
    shared by every answer of ``n`` nodes)."""
    ids = np.arange(n, dtype=np.int64)
    ids.flags.writeable = False
    return packed_varints(ids), ids


Answer = Results | pb.EvaluateResponse


def read(raw: bytes) -> tuple[int, bytes, Answer]:
    """A Train stream's answer ``raw``: its id, its failure status (serialized, empty if
    none) and its results, ``Results`` or, for a long answer, the generated message. (grpc's
    thread that receives the answer calls it.)"""
    if len(raw) > _TWIN_UP_TO_BYTES:
        answer = pb.TrainResponse.FromString(raw)
        return answer.id, answer.status, answer.response
    twin = _TrainTwin.FromString(raw)
    return twin.id, twin.status, Results(raw, twin.response)
