"""The synchronous work of an Evaluate or EvaluateStream call, as steps the servicer runs
on its executor (or, when small, on the event loop): decode the request, find or compile
its plan, then evaluate it through the engine's one entry (``engine.run.Engine``), in row
blocks when the whole batch would not fit the memory budget, and encode the reply. Every
step polls ``should_stop``.
"""

import dataclasses
from collections.abc import Callable, Iterator

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
# A request's bytes and, while they are decoded, the message: packed varints of one byte
# widen to 4-byte ints.
RAW_REQUEST_BYTES_PER_BYTE = 5

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
    return RAW_REQUEST_BYTES_PER_BYTE * raw_length


def request_bytes(request: pb.EvaluateRequest) -> int:
    """The memory of the decoded request, from its fields' lengths."""
    graph = request.graph
    ints = len(graph.node_ops) + len(graph.input_counts) + len(graph.input_ids)
    ints += len(request.nodes) + len(request.outputs)
    doubles = len(graph.leaf_values) + len(request.leaf_tangents) + len(request.seeds)
    text = sum(map(len, graph.op_names)) + sum(map(len, graph.labels)) + 64 * len(graph.labels)
    return 4 * ints + 8 * doubles + text + len(request.plan_digest)


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
    """A request with its plan, ready to evaluate."""

    request: pb.EvaluateRequest
    plan: Plan
    digest: bytes
    leaves: np.ndarray  # (rows, leaves)
    outputs: np.ndarray
    seeds: np.ndarray
    selected: np.ndarray
    tangents: np.ndarray | None = None  # (rows, leaves): a JVP and HVP call

    @property
    def rows(self) -> int:
        return self.leaves.shape[0]

    @property
    def every_node(self) -> bool:
        """Whether every node goes back, in id order (SELECTION_ALL): the engine's results
        are then the reply's as they are, with no copy taken of them."""
        request = self.request
        selection = requests.selection_of(request.selection, request.nodes)
        return selection == requests.SELECTION_ALL and len(self.selected) == self.plan.node_count

    @property
    def results_per_node(self) -> int:
        """Arrays of results per node: values and gradients, and their tangents."""
        return 2 if self.tangents is None else 4

    def memory(self, block_rows: int, streaming: bool) -> int:
        """Evaluation of ``block_rows`` rows at a time, and the results it keeps: all of
        them for a unary reply, one chunk at a time for a stream."""
        kept = (
            memory.results_bytes(min(len(self.selected), CHUNK_NODE_ROWS), 1)
            if streaming
            else memory.results_bytes(len(self.selected), self.rows)
        )
        factor = self.results_per_node // 2  # tangents double the results kept
        tangents = self.tangents is not None
        return memory.evaluation_bytes(self.plan.sizes, block_rows, tangents) + factor * kept

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
        """The request's plan from the cache, compiling (and caching) it on a miss. The
        trace ``step`` (``tracing``) learns which it was."""
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
            return plan, request.plan_digest
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
        if plan is None:
            if graph is None:
                graph = self._graph_arrays(request.graph)
            plan = self._engine.compile(digest, graph, should_stop)
        return plan, digest

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
        return Job(request, plan, digest, leaves, outputs, seeds, selected, tangents)

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
            job.leaves, job.outputs, job.seeds, job.tangents, job.request.allow_non_finite
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
                del block
        return packed.evaluate_response(job.selected, *results[:2], job.digest, *results[2:])


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
    return packed.evaluate_response(
        answer.ids, answer.values, answer.grads, digest, wire_ids=answer.wire_ids
    )


def answer_chunks(answer: Answer, digest: bytes, chunk_size: int) -> Iterator[bytes]:
    """The GradientChunks of an engine's answer (one row), at most CHUNK_NODE_ROWS node
    results each, or ``chunk_size`` nodes when the client asks for fewer."""
    total = len(answer.ids)
    per_chunk = nodes_per_chunk(1, chunk_size, total)
    for start in range(0, total, per_chunk):
        part = slice(start, start + per_chunk)
        yield packed.gradient_chunk(
            answer.ids[part],
            answer.values[part],
            answer.grads[part],
            digest,
            total_nodes=total,
            first_row=0,
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
