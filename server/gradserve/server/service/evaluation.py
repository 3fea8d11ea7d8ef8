"""The synchronous work of an Evaluate or EvaluateStream call, as steps the servicer runs
on its executor (or, when small, on the event loop): decode the request, find or compile
its plan, then evaluate it through the engine's one entry (``engine.run.Engine``), in row
blocks when the whole batch would not fit the memory budget, and encode the reply. Every
step polls ``should_stop``.
"""

import dataclasses
from collections.abc import Callable, Iterator
from operator import countOf

import numpy as np
from google.protobuf.message import DecodeError

from gradserve.server.engine import memory, requests
from gradserve.server.engine.errors import GraphError, PlanNotFound
from gradserve.server.engine.plan import GraphArrays, Plan, raise_if_stopped
from gradserve.server.engine.plan_cache import small_structure_digest, structure_digest
from gradserve.server.engine.run import Answer, Engine, Inputs
from gradserve.server.service import packed, tracing, wire
from gradserve.server.service.limits import LimitExceeded, Limits
from gradserve.v1 import gradserve_pb2 as pb

DIGEST_BYTES = 16
CHUNK_NODE_ROWS = 65_536  # node results in one stream chunk (20 bytes each): ~1.3 MB
MAX_CHUNKS = 4_096  # chunks of one row block at most, whatever chunk_size asks
# Sending an engine's answer, per result of a chunk (answer_chunk_bytes): measured with
# tracemalloc, building a chunk peaks at about 75 bytes a result (ids of up to 2,048 nodes
# as int objects of their own, three lists, the packed fields and the joined message) and
# the message takes about 17 more; grpc's copy of it, as much again.
ANSWER_CHUNK_BYTES_PER_RESULT = 128
# An engine's answer itself (answer_bytes): its values and gradients, lists of up to
# small_call.MAX_NODES floats (a pointer and a float object each), and its ids: a range, a
# list of up to as many (a pointer and an int object each), or many as 4-byte ids.
ANSWER_BYTES_PER_NODE = 2 * (8 + 24)
ANSWER_BYTES_PER_LISTED_ID = 8 + 32
# A request's bytes and, while they are decoded, the message: packed varints of one byte
# widen to 4-byte ints. A large request is charged its decoded fields once it is decoded
# (request_bytes); a small one, by its length alone for the whole call, so its bound holds
# for any fields: the worst is empty strings, each 2 bytes on the wire and up to 64 bytes
# of grown views (request_bytes) and 16 of text in the arena, 40 a byte, and the bytes.
SMALL_REQUEST_BYTES = 64 * 1024
RAW_REQUEST_BYTES_PER_BYTE = 5
SMALL_REQUEST_BYTES_PER_BYTE = 41
# A decoded request (request_bytes): a string's view and the rounding of its text, and the
# arena's own blocks and the message (about 10 KB measured).
STRING_VIEW_BYTES = 16
STRING_ROUNDING_BYTES = 16
MESSAGE_BYTES = 16 * 1024

StopCheck = Callable[[], bool]


def decode(raw: bytes) -> pb.EvaluateRequest:
    """The request message, or INVALID_ARGUMENT for bytes that are not one."""
    try:
        return pb.EvaluateRequest.FromString(raw)
    except DecodeError:
        reason = "the bytes are not a valid protobuf message of this method's request type"
        raise GraphError(reason, field="request") from None


def raw_request_bytes(raw_length: int) -> int:
    """The memory of a request's bytes and of decoding them, from their length alone."""
    if raw_length <= SMALL_REQUEST_BYTES:
        return SMALL_REQUEST_BYTES_PER_BYTE * raw_length
    return RAW_REQUEST_BYTES_PER_BYTE * raw_length


def request_bytes(request: pb.EvaluateRequest) -> int:
    """The memory of the decoded request, from its fields' lengths.

    Protobuf's C parser (upb) keeps the message in an arena that gives no block back. A
    repeated field whose entries it cannot count beforehand (varints, or entries sent
    unpacked) grows by doubling, and the arrays it outgrew stay: a field of n entries holds
    up to twice its capacity (the power of two at or above n) in entries. A string is a
    16-byte view in such an array, and its text rounded up in the arena. Measured with
    malloc's own count in tests/test_resilience_estimate.py."""
    graph = request.graph
    ints = (graph.node_ops, graph.input_counts, graph.input_ids, request.nodes, request.outputs)
    doubles = (graph.leaf_values, request.leaf_tangents, request.seeds)
    arrays = sum(_grown(4, len(field)) for field in ints)
    arrays += sum(_grown(8, len(field)) for field in doubles)
    strings = 0
    for field in (graph.op_names, graph.labels):
        arrays += _grown(STRING_VIEW_BYTES, len(field))
        strings += sum(map(len, field)) + STRING_ROUNDING_BYTES * len(field)
    return arrays + strings + len(request.plan_digest) + MESSAGE_BYTES


def _grown(entry_bytes: int, entries: int) -> int:
    """A repeated field's arrays, grown by doubling to hold ``entries``: twice the last."""
    return 2 * entry_bytes * (1 << (entries - 1).bit_length()) if entries else 0


def lookup_cost(request: pb.EvaluateRequest) -> int:
    """The memory finding the request's plan in the cache takes (0 when it names a plan):
    its structure as arrays and strings (``Evaluator.find``), from its fields' lengths."""
    if request.plan_digest:
        return 0
    graph = request.graph
    nodes, inputs = max(len(graph.node_ops), len(graph.input_counts)), len(graph.input_ids)
    fields = (graph.op_names, graph.labels)
    strings = sum(map(len, fields))
    empty = sum(countOf(field, "") for field in fields)  # Python's one empty string
    characters = sum(sum(map(len, field)) for field in fields)
    return memory.structure_bytes(nodes, inputs, strings - empty, empty, characters)


def compile_cost(request: pb.EvaluateRequest, raw_length: int) -> int:
    """The memory compiling the request's graph would take (0 when it names a plan); its
    labels hold at most the ``raw_length`` bytes of the request message."""
    if request.plan_digest:
        return 0
    graph = request.graph
    return memory.compile_bytes(
        len(graph.node_ops), len(graph.input_ids), len(graph.labels), raw_length
    )


@dataclasses.dataclass
class Job:
    """A request's plan and arrays, ready to evaluate: all the call keeps of its request,
    whose message (8 MiB for a million selected ids) is let go once the job is made."""

    plan: Plan
    digest: bytes
    leaves: np.ndarray  # (rows, leaves)
    outputs: np.ndarray
    seeds: np.ndarray
    selected: np.ndarray
    tangents: np.ndarray | None = None  # (rows, leaves): a JVP and HVP call
    allow_non_finite: bool = False
    # Every node goes back, in id order (SELECTION_ALL): the engine's results are then
    # the reply's as they are, with no copy taken of them.
    every_node: bool = False

    @property
    def rows(self) -> int:
        return self.leaves.shape[0]

    @property
    def results_per_node(self) -> int:
        """Arrays of results per node: values and gradients, and their tangents."""
        return 2 if self.tangents is None else 4

    @property
    def arrays_bytes(self) -> int:
        """The job's own arrays, held the whole call through: the leaf values (and
        tangents) of every row, and the selected ids (a million for a request that selects
        one node a million times)."""
        arrays = (self.leaves, self.outputs, self.seeds, self.selected, self.tangents)
        return sum(array.nbytes for array in arrays if array is not None)

    def memory(self, block_rows: int, streaming: bool) -> int:
        """The job's arrays, evaluation of ``block_rows`` rows at a time, and the results
        it keeps: all of them for a unary reply, one chunk at a time for a stream."""
        kept = (
            memory.results_bytes(min(len(self.selected), CHUNK_NODE_ROWS), 1)
            if streaming
            else memory.results_bytes(len(self.selected), self.rows)
        )
        factor = self.results_per_node // 2  # tangents double the results kept
        tangents = self.tangents is not None
        evaluating = memory.evaluation_bytes(self.plan.sizes, block_rows, tangents)
        return self.arrays_bytes + evaluating + factor * kept

    def sending_memory(self, block_rows: int) -> int:
        """What a stream holds while a block's chunks are sent, once the block has been
        evaluated: the job's arrays, the block's results (every node's values and gradients,
        and tangents), and the chunk being made and sent (as ``memory`` counts it)."""
        factor = self.results_per_node // 2
        results = 8 * self.results_per_node * self.plan.node_count * block_rows
        chunk_nodes = min(len(self.selected), nodes_per_chunk(block_rows, 0, len(self.selected)))
        chunk = memory.results_bytes(chunk_nodes, block_rows)
        return self.arrays_bytes + results + factor * chunk

    def block_rows(self, allowance: int, streaming: bool) -> int:
        """The most rows evaluated at once within ``allowance`` bytes (at least 1; a stream
        also keeps a block's results of one node within one chunk)."""
        rows = self.rows
        if streaming:
            rows = min(rows, CHUNK_NODE_ROWS)
        per_row = memory.evaluation_bytes_per_row(self.plan.sizes, self.tangents is not None)
        fixed = self.memory(0, streaming)
        return max(1, min(rows, (allowance - fixed) // max(per_row, 1)))


class Evaluator:
    """The steps, with what they share: the engine (ops, plan cache, isolation workers)
    and the limits of one server."""

    def __init__(self, engine: Engine, limits: Limits, max_message_bytes: int) -> None:
        self._engine = engine
        self._limits = limits
        self.max_message_bytes = max_message_bytes

    def plan(self, request: pb.EvaluateRequest, step, should_stop: StopCheck) -> tuple[Plan, bytes]:
        """The request's plan from the cache, compiling (and caching) it on a miss."""
        plan, digest, graph = self.find(request, step, should_stop)
        if plan is None:
            plan = self.compile(request, digest, graph, should_stop)
        return plan, digest

    def find(
        self, request: pb.EvaluateRequest, step, should_stop: StopCheck
    ) -> tuple[Plan | None, bytes, GraphArrays | None]:
        """The request's plan from the cache (None on a miss), its digest, and on a miss
        the graph's arrays when the digest needed them (``compile`` takes them). The trace
        ``step`` (``tracing``) learns which it was. Its memory is ``lookup_cost``'s: a
        hit holds no more, and a miss compiles in a step of its own."""
        if request.plan_digest:
            if wire.has_structure(request.graph):
                raise GraphError(
                    "send either a graph structure or a plan_digest, not both",
                    field="plan_digest",
                )
            if len(request.plan_digest) != DIGEST_BYTES:
                raise GraphError(
                    f"plan_digest must be {DIGEST_BYTES} bytes (as a reply's plan_digest), "
                    f"got {len(request.plan_digest)}",
                    field="plan_digest",
                )
            plan = self._engine.plans.get(request.plan_digest)
            step.set_attribute(tracing.PLAN_CACHE, "miss" if plan is None else "hit")
            if plan is None:
                raise PlanNotFound(request.plan_digest)
            return plan, request.plan_digest, None
        self._limits.check_sizes(request)
        graph = None
        digest = small_structure_digest(request.graph)
        if digest is None:
            graph = self._graph_arrays(request.graph)
            raise_if_stopped(should_stop)  # each step here takes up to a second on a huge graph
            digest = structure_digest(graph)
            raise_if_stopped(should_stop)
        plan = self._engine.plans.get(digest)
        step.set_attribute(tracing.PLAN_CACHE, "miss" if plan is None else "hit")
        return plan, digest, graph if plan is None else None

    def compile(
        self,
        request: pb.EvaluateRequest,
        digest: bytes,
        graph: GraphArrays | None,
        should_stop: StopCheck,
    ) -> Plan:
        """The plan ``find`` missed, compiled now and cached (from ``graph``, the request
        graph's arrays, when ``find`` made them)."""
        if graph is None:
            graph = self._graph_arrays(request.graph)
        return self._engine.compile(digest, graph, should_stop)

    def _graph_arrays(self, graph: pb.Graph) -> GraphArrays:
        """The graph's fields as arrays, once its fan-in is known to be within the limit.

        A cached plan passed this check when it was compiled, so a hit skips it."""
        arrays = wire.graph_arrays(graph)
        self._limits.check_fan_in(arrays.input_counts)
        return arrays

    def job(self, request: pb.EvaluateRequest, plan: Plan, digest: bytes) -> Job:
        tangents = None
        if request.leaf_tangents:  # JVPs and HVPs: every op needs second derivatives
            self._engine.check_tangents(plan)
            tangents = wire.leaf_tangent_rows(request, plan)
        outputs, seeds = wire.outputs_and_seeds(request, plan)
        selected = wire.selected_nodes(request, plan)
        leaves = wire.leaf_rows(request, plan)
        selection = requests.selection_of(request.selection, request.nodes)
        every_node = selection == requests.SELECTION_ALL and len(selected) == plan.node_count
        return Job(
            plan,
            digest,
            leaves,
            outputs,
            seeds,
            selected,
            tangents,
            allow_non_finite=request.allow_non_finite,
            every_node=every_node,
        )

    def check_reply_fits(self, request: pb.EvaluateRequest, plan: Plan) -> int:
        """Refuse, before evaluating, an Evaluate whose reply could never be sent (the
        selection's size from the request's fields); else the reply's estimated bytes."""
        nodes = request.nodes
        selection = requests.selection_of(request.selection, nodes)
        if nodes:
            selected = len(nodes)
        elif selection == requests.SELECTION_LEAVES:
            selected = len(plan.leaves)
        else:
            selected = plan.node_count
        per_node = 2 if not request.leaf_tangents else 4
        size = reply_bytes(selected, request.rows or 1, per_node)
        if size > self.max_message_bytes:
            raise LimitExceeded(
                f"the reply would take about {size / 2**20:,.1f} MiB, more than this server's "
                f"max-message-mb = {self.max_message_bytes // 2**20}; use EvaluateStream, "
                "whose chunks always fit, or select fewer nodes or rows",
                field="nodes",
            )
        return size

    def evaluate_block(
        self, job: Job, first: int, rows: int, should_stop: StopCheck
    ) -> tuple[np.ndarray, ...]:
        """Every node's values and gradients (and, for a call with tangents, their
        tangents) for rows [first, first + rows), each shaped (nodes, rows)."""
        inputs = Inputs(
            job.leaves, job.outputs, job.seeds, job.tangents, job.allow_non_finite
        ).rows(slice(first, first + rows))
        return self._engine.evaluate(job.plan, job.digest, inputs, should_stop)

    def unary_reply(self, job: Job, block_rows: int, should_stop: StopCheck) -> bytes:
        """The EvaluateResponse, evaluated ``block_rows`` rows at a time."""
        if block_rows >= job.rows:
            block = self.evaluate_block(job, 0, job.rows, should_stop)
            if job.every_node:  # a million-node backward's two copies took 6 ms
                results = list(block)
            else:
                results = [result.take(job.selected, axis=0) for result in block]
        else:
            shape = (len(job.selected), job.rows)
            results = [np.empty(shape) for _ in range(job.results_per_node)]
            for first in range(0, job.rows, block_rows):
                block = self.evaluate_block(job, first, block_rows, should_stop)
                last = first + block[0].shape[1]
                for result, block_result in zip(results, block, strict=True):
                    result[:, first:last] = block_result.take(job.selected, axis=0)
                # block_result too: it held the block's gradients through the next block
                del block, block_result
        wire_ids = self._engine.every_node_ids(job.plan, job.digest) if job.every_node else None
        return packed.evaluate_response(
            job.selected, *results[:2], job.digest, *results[2:], wire_ids=wire_ids
        )


def reply_bytes(selected: int, rows: int, results_per_node: int) -> int:
    """The size of an EvaluateResponse: doubles, an id varint of up to 5 bytes per node,
    and the digest and rows fields."""
    return 8 * results_per_node * selected * rows + 5 * selected + 64


def nodes_per_chunk(rows: int, chunk_size: int, selected: int) -> int:
    """Nodes in one GradientChunk of ``rows`` rows: at most CHUNK_NODE_ROWS node results,
    fewer when the client asks for ``chunk_size`` nodes (0: no wish), but never so few that
    the ``selected`` nodes take more than MAX_CHUNKS chunks per row block: a chunk costs a
    message's work whatever it holds, so a 5 MB request selecting one node 5 million
    times in chunks of 1 would cost a core for minutes."""
    per_chunk = max(1, CHUNK_NODE_ROWS // rows)
    if chunk_size:
        per_chunk = min(per_chunk, max(chunk_size, -(-selected // MAX_CHUNKS)))
    return per_chunk


def answer_reply(answer: Answer, digest: bytes) -> bytes:
    """The EvaluateResponse of an engine's answer (one row)."""
    ids, values, grads = answer.part(0, answer.count)
    return packed.evaluate_response(ids, values, grads, digest, wire_ids=answer.wire_ids)


def answer_chunk_nodes(answer: Answer, chunk_size: int) -> int:
    """Results in the largest GradientChunk of an engine's answer (one row)."""
    return min(nodes_per_chunk(1, chunk_size, answer.count), answer.count)


def answer_bytes(answer: Answer) -> int:
    """What an engine's answer holds while it is sent: its results, and its ids (copied
    out of the request, whose message is let go: ``small_call``)."""
    ids = answer.ids
    listed = ids.nbytes if isinstance(ids, np.ndarray) else ANSWER_BYTES_PER_LISTED_ID * len(ids)
    return listed + ANSWER_BYTES_PER_NODE * len(answer.values)


def answer_chunk_bytes(nodes: int) -> int:
    """What sending an engine's answer holds beyond the answer itself, in chunks of ``nodes``
    results: one chunk being built (its ids, values and gradients as lists, then packed
    and joined into the message), and the message while grpc sends it (the server's copy
    and grpc's). The results by node, of a plan small enough for the engine to answer
    whole, are a few kilobytes at most. Checked against tracemalloc in
    tests/test_admission_ledger.py."""
    return ANSWER_CHUNK_BYTES_PER_RESULT * nodes


def answer_chunks(answer: Answer, digest: bytes, chunk_size: int) -> Iterator[bytes]:
    """The GradientChunks of an engine's answer (one row), at most CHUNK_NODE_ROWS node
    results each, or ``chunk_size`` nodes when the client asks for fewer. Each chunk's
    results are gathered as it is made, and let go of before it is sent."""
    total = answer.count
    per_chunk = nodes_per_chunk(1, chunk_size, total)
    for start in range(0, total, per_chunk):
        yield packed.gradient_chunk(
            *answer.part(start, start + per_chunk), digest, total_nodes=total, first_row=0
        )


def block_chunks(
    job: Job, first: int, block: tuple[np.ndarray, ...], chunk_size: int
) -> Iterator[bytes]:
    """The chunks of one row block (its values, gradients and tangents), each gathering its
    own nodes' results (so that the selection's results are never all held at once)."""
    rows = block[0].shape[1]
    per_chunk = nodes_per_chunk(rows, chunk_size, len(job.selected))
    for start in range(0, len(job.selected), per_chunk):
        ids = job.selected[start : start + per_chunk]
        values, grads, *tangents = (result.take(ids, axis=0) for result in block)
        yield packed.gradient_chunk(
            ids,
            values,
            grads,
            job.digest,
            total_nodes=len(job.selected),
            first_row=first,
            value_tangents=tangents[0] if tangents else None,
            grad_tangents=tangents[1] if tangents else None,
        )
