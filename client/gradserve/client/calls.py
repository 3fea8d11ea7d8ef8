"""What the sync and async clients share: building requests from Values, reading results."""

import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from gradserve.client import replies, structure, wire
from gradserve.client.channel import MAX_MESSAGE_BYTES
from gradserve.client.opcodes import LEAF
from gradserve.client.subgraph import Subgraph
from gradserve.client.tape import CONSTANT, tape_of
from gradserve.client.value import Value
from gradserve.v1 import gradserve_pb2 as pb

# A backward of more nodes streams its results (EvaluateStream, with a progress bar); up to
# it, one message, which a training loop sends by plan digest. Each node's results take at
# most 21 bytes of the reply (an id's varint, two doubles); a client with a smaller message
# limit streams sooner.
STREAM_ABOVE = 1 << 20
REPLY_BYTES_PER_NODE = 24


def streams(nodes: int, max_message_bytes: int) -> bool:
    """Whether a backward of ``nodes`` nodes streams its results."""
    return nodes > min(STREAM_ABOVE, max_message_bytes // REPLY_BYTES_PER_NODE)


_GRAPH, _PLAN_DIGEST = 1, 7  # EvaluateRequest's field numbers


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
    to read its results.

    When the client's server compiled a graph of the same structure before, ``request``
    names that plan by its digest and carries only the leaf values; ``full_request`` then
    builds the request with the whole graph, for a server that no longer holds the plan.
    """

    request: bytes
    subgraph: Subgraph
    output_count: int = 0
    fingerprint: bytes = b""
    full_request: Callable[[], bytes] | None = field(default=None, compare=False)

    def whole_graph(self) -> bytes:
        """The request with the whole graph (a stream always sends it)."""
        return self.request if self.full_request is None else self.full_request()


class PlanDigests:
    """The server's plan digests of the graph structures one client sent, by the SDK's own
    fingerprint of the structure, so that a training loop, which sends graphs of one
    structure again and again, sends only the digest and new leaf values (DESIGN.md, 5).

    The fingerprint (``Structure.fingerprint``) hashes what the server's digest covers (ops,
    inputs, labels), in the SDK's own columns, so it costs a hash of two arrays rather than
    the wire encoding, once per structure.
    """

    MAX_ENTRIES = 256

    def __init__(self) -> None:
        self._digests: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, fingerprint: bytes) -> bytes | None:
        return self._digests.get(fingerprint)

    def learn(self, call: Call, response) -> None:
        """Keep the digest a reply named for the call's structure."""
        if call.fingerprint and response.plan_digest:
            self._digests[call.fingerprint] = response.plan_digest
            self._digests.move_to_end(call.fingerprint)
            while len(self._digests) > self.MAX_ENTRIES:
                self._digests.popitem(last=False)

    def forget(self, call: Call, error: grpc.RpcError) -> bool:
        """Whether ``error`` says the server lost the plan the call named (NOT_FOUND); the
        digest is then forgotten and the call is to be sent again with its whole graph."""
        if call.full_request is None or error.code() != grpc.StatusCode.NOT_FOUND:
            return False
        self._digests.pop(call.fingerprint, None)
        return True


def _as_list(values: Value | Sequence[Value]) -> list[Value]:
    values = [values] if isinstance(values, Value) else list(values)
    for value in values:
        if not isinstance(value, Value):
            raise TypeError(f"expected Values, got {value!r}")
    return values


def backward_call(
    loss: Value,
    *,
    allow_non_finite: bool = False,
    plans: PlanDigests | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> Call:
    """Every node the loss depends on, differentiated from the loss, all results back; when
    streamed, in chunks that fit the client's ``max_message_bytes``."""
    if not isinstance(loss, Value):
        raise TypeError(f"backward needs a Value, got {loss!r}")
    chunk_size = min(STREAM_ABOVE, max_message_bytes // REPLY_BYTES_PER_NODE)
    call = evaluate_call(
        loss, wrt="all", allow_non_finite=allow_non_finite, plans=plans, chunk_size=chunk_size
    )
    call.subgraph.tape.results = None  # an earlier backward's results are stale
    return call


def evaluate_call(
    outputs,
    wrt=None,
    seeds=None,
    *,
    with_outputs=False,
    chunk_size=0,
    batch=None,
    allow_non_finite=False,
    plans: PlanDigests | None = None,
) -> Call:
    """``wrt``: a list of Values, None for the graph's leaves, or "all" for every node.

    With ``with_outputs`` the outputs' own results come first (``Call.output_count`` of them).
    ``batch`` maps leaf Values to sequences of B values: the graph is evaluated at B rows, the
    other leaves keeping their ``.data`` in every row. With ``plans``, a structure the server
    compiled before is named by its digest (see ``PlanDigests``).
    """
    outputs = _as_list(outputs)
    if not outputs:
        raise ValueError("evaluate needs at least one output")
    wanted = [] if wrt is None or isinstance(wrt, str) else _as_list(wrt)
    tape = tape_of([*outputs, *wanted])
    roots = [tape.leaf_id(v) if v._tape is None else v._id for v in outputs]
    # A Value of wrt that the outputs do not read goes too, read by nothing: its gradient is
    # 0 and its tangent changes nothing, as micrograd, torch and jax have it.
    unread = [tape.leaf_id(v) if v._tape is None else v._id for v in wanted]
    subgraph = tape.subgraph(roots + unread)
    tape.sent = True
    leaf_values = subgraph.leaf_values()
    # A backward's fields other than the graph depend on its structure and options only: a
    # training loop's steps serialize them once.
    plain = wrt == "all" and not seeds and not batch
    same_fields = (*roots, chunk_size, allow_non_finite) if plain else None
    head = subgraph.structure.heads.get(same_fields) if plain else None
    if head is None:
        fields = pb.EvaluateRequest(
            outputs=[subgraph.position(r) for r in roots],
            seeds=[] if seeds is None else [float(s) for s in seeds],
            chunk_size=chunk_size,
            allow_non_finite=allow_non_finite,
        )
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
        head = fields.SerializeToString()
        if plain:
            subgraph.structure.heads[same_fields] = head
    output_count = len(outputs) if with_outputs else 0
    if plans is None:
        request = head + wire.message(_GRAPH, subgraph.graph(leaf_values))
        return Call(structure.structured(request, subgraph.digest), subgraph, output_count)
    labels = subgraph.labels()
    key = subgraph.structure.fingerprint(labels)
    digest = plans.get(key)

    def full_request() -> bytes:
        request = head + wire.message(_GRAPH, subgraph.graph(leaf_values, labels))
        return structure.structured(request, subgraph.digest)  # for routing by structure

    if digest is None:
        return Call(full_request(), subgraph, output_count, key)
    payload = wire.doubles(leaf_values)
    request = _by_digest_prefix(head, digest, len(payload)) + payload
    request = structure.structured(request, digest)  # the plan digest is the structure's
    return Call(request, subgraph, output_count, key, full_request)


@functools.lru_cache(maxsize=64)
def _by_digest_prefix(head: bytes, digest: bytes, payload_bytes: int) -> bytes:
    """A request naming plan ``digest``, without the leaf values' bytes that end it: the same
    for every step of a training loop, so its fields are encoded once."""
    graph = Subgraph.leaves_only(np.zeros(payload_bytes // 8))
    request = head + wire.message(_PLAN_DIGEST, digest) + wire.message(_GRAPH, graph)
    return request[: len(request) - payload_bytes]


def _positions(wrt, subgraph: Subgraph, tape) -> list[int]:
    """The positions of the Values ``wrt`` in the sent graph (None: the user's leaves, not
    the constants the SDK made from numbers)."""
    if wrt is None:
        leaves = np.flatnonzero(subgraph.codes == LEAF)
        values = subgraph.values(leaves)
        return [p for p, v in zip(leaves.tolist(), values, strict=True) if v._id != CONSTANT]
    ids = [tape.leaf_ids[v] if v._tape is None else v._id for v in _as_list(wrt)]
    return [subgraph.position(i) for i in ids]  # each was sent (evaluate_call)


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
    if len(messages) == 1:  # a unary reply: its arrays as they are
        subgraph.fill(*arrays(messages[0]))
        return
    columns = zip(*map(arrays, messages), strict=True)  # ids, values, grads
    subgraph.fill(*(np.concatenate(column) for column in columns))


def arrays(message) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A reply's node ids (int64), values and gradients (float64)."""
    if isinstance(message, replies.Results):  # a Train stream's, read from its bytes
        read = message.arrays()
        if read is not None:
            return read
        message = message.whole()
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
