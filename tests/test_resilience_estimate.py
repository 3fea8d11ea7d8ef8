"""The memory estimate counts every array evaluation allocates (issue 19, finding 3): edges x
rows, tangents x nodes x rows, the per-input arrays of a wide op, a chain's lists. Checked
against tracemalloc's measured peak of the engine over graphs of every shape: never below
it, at most 3x above it (a 40-bytes-a-node estimate charged a 1M-input HVP 4 MB for 400)."""

import gc
import tracemalloc

import numpy as np
import pytest
import shapes

from bench.arriving_live import in_use_mib
from gradserve.server.engine import memory
from gradserve.server.engine.evaluate import evaluate
from gradserve.server.engine.plan import compile_graph
from gradserve.server.engine.plan_cache import PlanCache
from gradserve.server.engine.run import Engine
from gradserve.server.engine.second_order import evaluate_with_tangents
from gradserve.server.service import evaluation, packed
from gradserve.server.service.limits import Limits
from gradserve.v1 import gradserve_pb2 as pb

CHUNK = evaluation.CHUNK_NODE_ROWS
CASES = [
    (shape, rows, tangents)
    for shape in sorted(shapes.SHAPES)
    for rows in (1, 64)
    for tangents in (False, True)
] + [("mlp", 256, False), ("mlp", 256, True)]  # many rows
# The wide HVP of bench/abusers.py: tangents through a sum of a million leaves, in one row,
# whose op calls take a million arguments each (15 s under tracemalloc on a loaded 2-core
# machine; without tangents the same shape is "wide fan-in" above, per input alike).
LARGE = {"wide HVP": lambda: shapes.wide_fan_in(1_000_000)}
CASES += [("wide HVP", 1, True)]


def _peak(call) -> int:
    """The peak of what ``call()`` allocates above what was allocated before it."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        results = call()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    del results
    return peak


@pytest.mark.parametrize(("shape", "rows", "tangents"), CASES)
def test_the_estimate_is_never_below_the_peak_nor_3x_above_it(ops, shape, rows, tangents):
    graph = {**shapes.SHAPES, **LARGE}[shape]()
    plan = compile_graph(graph, ops)
    rng = np.random.default_rng(0)
    leaves = rng.uniform(0.1, 0.9, (rows, shapes.leaf_count(graph)))
    directions = rng.uniform(-1, 1, leaves.shape)
    outputs, seeds = np.array([plan.node_count - 1]), np.array([1.0])
    if tangents:
        peak = _peak(lambda: evaluate_with_tangents(plan, leaves, directions, outputs, seeds))
    else:
        peak = _peak(lambda: evaluate(plan, leaves, outputs, seeds))  # a cold plan: scatters
    estimate = memory.evaluation_bytes(plan.sizes, rows, tangents)
    assert peak <= estimate <= 3 * peak, f"peak {peak:,}, estimate {estimate:,}"


def test_each_more_row_adds_at_most_the_per_row_estimate(ops):
    """``block_rows`` divides by ``evaluation_bytes_per_row``: it must bound the growth."""
    for make in shapes.SHAPES.values():
        sizes = compile_graph(make(), ops).sizes
        for tangents in (False, True):
            per_row = memory.evaluation_bytes_per_row(sizes, tangents)
            for rows in (1, 2, 100, 10_000):
                grown = memory.evaluation_bytes(sizes, rows + 1, tangents)
                assert grown - memory.evaluation_bytes(sizes, rows, tangents) <= per_row


COMPILED = {
    **shapes.SHAPES,
    "short labels": lambda: shapes.labelled(5_000, 64),
    "labels of 4-byte characters": lambda: shapes.labelled(5_000, 200, "\N{GRINNING FACE}"),
}


@pytest.mark.parametrize("shape", sorted(COMPILED))
def test_the_compile_estimate_is_never_below_compiling_s_peak_nor_10x_above(ops, shape):
    """Per node and input alike for every shape, so loose on some: 1.2x the peak of a long
    chain, 8x a wide fan-in's. Labels are bounded by their bytes in UTF-8, as the
    request's length bounds them on the server."""
    graph = COMPILED[shape]()
    peak = _peak(lambda: compile_graph(graph, ops))
    label_bytes = sum(len(label.encode()) for label in graph.labels)
    nodes, inputs = len(graph.node_ops), len(graph.input_ids)
    estimate = memory.compile_bytes(nodes, inputs, len(graph.labels), label_bytes)
    assert peak <= estimate <= 10 * peak, f"peak {peak:,}, estimate {estimate:,}"


LOOKED_UP = {
    **COMPILED,
    "labels of 8 characters": lambda: shapes.labelled(20_000, 0),
    "empty labels": lambda: _emptied(shapes.labelled(20_000, 0)),
    "labels of ASCII but one 4-byte character": lambda: _widened(shapes.labelled(5_000, 200)),
}


def _widened(graph):
    """Each label's last character made a 4-byte one: every character then takes 4 bytes."""
    graph.labels[:] = [label[:-1] + "\N{GRINNING FACE}" for label in graph.labels]
    return graph


def _emptied(graph):
    graph.labels[:] = [""] * len(graph.labels)
    return graph


class _Step:
    def set_attribute(self, _key, _value) -> None:
        pass


@pytest.mark.parametrize("shape", sorted(LOOKED_UP))
def test_the_lookup_estimate_is_never_below_finding_a_plan_s_peak_nor_4x_above(ops, shape):
    """A plan's lookup (the structure's arrays and strings, and its digest) holds no more
    than ``lookup_cost`` charges from the request's fields, which is loose by up to 4x
    only for labels of ASCII (charged as if each character took 4 bytes)."""
    arrays = LOOKED_UP[shape]()
    graph = pb.Graph(
        op_names=arrays.op_names,
        node_ops=arrays.node_ops.tolist(),
        input_counts=arrays.input_counts.tolist(),
        input_ids=arrays.input_ids.tolist(),
        labels=arrays.labels,
    )
    request = pb.EvaluateRequest(graph=graph)
    evaluator = evaluation.Evaluator(Engine(ops, PlanCache(2**30)), Limits(), 2**26)
    plan, _, made = evaluator.find(request, _Step(), lambda: False)
    assert plan is None and made is not None  # a miss: the arrays are what it holds
    del made
    peak = _peak(lambda: evaluator.find(request, _Step(), lambda: False))
    estimate = evaluation.lookup_cost(request)
    assert peak <= estimate <= 4 * peak, f"peak {peak:,}, estimate {estimate:,}"


# Python objects (the message's bytes object, the arrays' headers) on top of the arrays.
OBJECTS = 64 * 1024


@pytest.mark.parametrize(("nodes", "rows"), [(100, 100), (10_000, 1), (10_000, 7), (200_000, 1)])
def test_the_results_estimate_is_never_below_packing_s_peak_nor_far_above(nodes, rows):
    """``results_bytes``: the selected nodes' values and gradients gathered from every
    node's, then packed into an EvaluateResponse."""
    rng = np.random.default_rng(0)
    every = [rng.uniform(-1, 1, (nodes + 5, rows)) for _ in range(2)]
    selected = rng.permutation(nodes + 5)[:nodes]

    def pack():
        values, grads = (array.take(selected, axis=0) for array in every)
        return packed.evaluate_response(selected, values, grads, bytes(16))

    peak = _peak(pack)
    estimate = memory.results_bytes(nodes, rows)
    assert peak <= estimate + OBJECTS and estimate <= 1.5 * peak + OBJECTS, (
        f"peak {peak:,}, estimate {estimate:,}"
    )


@pytest.mark.parametrize(
    ("field", "entry_bytes"),
    [
        ("graph.node_ops", 4),
        ("graph.input_counts", 4),
        ("graph.input_ids", 4),
        ("nodes", 4),
        ("outputs", 4),
        ("graph.leaf_values", 8),
        ("leaf_tangents", 8),
        ("seeds", 8),
    ],
)
def test_a_decoded_request_is_charged_at_least_its_repeated_fields_as_arrays(field, entry_bytes):
    """The decoded message holds each packed field as a C array: 4 bytes an int entry
    (uint32), 8 a double."""
    request = pb.EvaluateRequest()
    empty = evaluation.request_bytes(request)
    holder = request.graph if field.startswith("graph.") else request
    getattr(holder, field.removeprefix("graph.")).extend([1] * 10_000)
    assert evaluation.request_bytes(request) - empty >= entry_bytes * 10_000


def _job(plan, rows: int, selected: np.ndarray, tangents: bool) -> evaluation.Job:
    """A job of ``rows`` rows of zeros through ``plan``, differentiating its last node."""
    leaves = np.zeros((rows, len(plan.leaves)))
    return evaluation.Job(
        plan=plan,
        digest=bytes(16),
        leaves=leaves,
        outputs=np.array([plan.node_count - 1]),
        seeds=np.array([1.0]),
        selected=selected,
        tangents=np.zeros_like(leaves) if tangents else None,
    )


@pytest.mark.parametrize("tangents", [False, True])
def test_a_unary_job_is_charged_the_results_its_reply_keeps(ops, tangents):
    """Every selected node's value and gradient (and their tangents) for every row, 8 bytes
    each, kept until the reply is sent, on top of evaluating."""
    plan = compile_graph(shapes.SHAPES["mlp"](), ops)
    rows = 5
    job = _job(plan, rows, np.arange(plan.node_count), tangents)
    kept = job.memory(0, streaming=False) - memory.evaluation_bytes(plan.sizes, 0, tangents)
    assert kept >= 8 * (4 if tangents else 2) * plan.node_count * rows


@pytest.mark.parametrize("streaming", [False, True])
def test_a_job_is_charged_its_own_arrays(ops, streaming):
    """A job holds its leaf values and tangents for every row and its selected ids the
    whole call through: a selection of one node a million times is 8 MB of ids, beside
    the evaluation and the results it keeps."""
    plan = compile_graph(shapes.SHAPES["mlp"](), ops)
    rows, leaves, selected = 3, len(plan.leaves), 1_000_000
    job = _job(plan, rows, np.zeros(selected, dtype=np.int64), tangents=True)
    kept = memory.results_bytes(CHUNK if streaming else selected, 1 if streaming else rows)
    others = memory.evaluation_bytes(plan.sizes, 1, tangents=True) + 2 * kept
    arrays = 8 * selected + 2 * 8 * rows * leaves + 16
    assert job.memory(1, streaming) - others == arrays


def test_a_unary_reply_in_row_blocks_holds_one_block_s_arrays_at_a_time(ops):
    """A batch evaluated in blocks of rows (the oversized batch of bench/abusers.py) holds
    one block's values and gradients at a time: its peak is one block's evaluation and the
    results kept (one node's). A loop variable once kept the gradients of each block
    through the next one (56 MiB in that batch's blocks)."""
    plan = compile_graph(shapes.deep_chain(200), ops)
    evaluator = evaluation.Evaluator(Engine(ops, PlanCache(2**30)), Limits(), 2**26)
    rows, block = 4_000, 500
    job = _job(plan, rows, np.array([0]), tangents=False)
    evaluator.unary_reply(job, block, lambda: False)  # the plan's scatters, made once
    one_block = _peak(lambda: evaluator.evaluate_block(job, 0, block, lambda: False))
    reply = _peak(lambda: evaluator.unary_reply(job, block, lambda: False))
    a_block_s_gradients = 8 * plan.node_count * block
    assert reply <= one_block + 16 * rows + OBJECTS < one_block + a_block_s_gradients


def _held_by_parsing(raw: bytes) -> tuple[pb.EvaluateRequest, float]:
    """The message parsed from ``raw``, and what parsing left allocated by malloc's own
    count (glibc's mallinfo2: protobuf's C parser allocates outside tracemalloc's view).
    The count is the whole process's: the least of three parses leaves out what other
    threads (a test server's) allocated meanwhile."""
    held = []
    for _ in range(3):
        gc.collect()
        before = in_use_mib()
        parsed = pb.EvaluateRequest.FromString(raw)
        held.append((in_use_mib() - before) * 2**20)
        if len(held) < 3:
            del parsed
    return parsed, min(held)


def _with(field: str, entries: list) -> pb.EvaluateRequest:
    request = pb.EvaluateRequest()
    holder = request.graph if field.startswith("graph.") else request
    getattr(holder, field.removeprefix("graph.")).extend(entries)
    return request


@pytest.mark.parametrize(
    ("field", "count", "value"),
    [
        ("nodes", 1_000_000, 0),  # one-byte varints: a megabyte's request
        ("nodes", 3_000_000, 1_000),  # 3M entries: just past a doubling
        ("graph.input_ids", 1_000_000, 70_000),
        ("graph.leaf_values", 1_000_000, 0.5),  # fixed-size entries: no growth
        ("graph.labels", 20_000, "a"),
        ("graph.op_names", 20_000, ""),
    ],
)
def test_a_parsed_request_is_charged_what_protobuf_holds_for_it(field, count, value):
    """Protobuf's C parser (upb) keeps a parsed message in an arena that gives no block
    back: a packed field of varints, whose entries it cannot count beforehand, grows by
    doubling and keeps each smaller array it outgrew (a million one-byte ids hold 7.5 MiB,
    not 3.8). What parsing leaves allocated is within the request's charge, and the charge
    within 3x of it."""
    parsed, held = _held_by_parsing(_with(field, [value] * count).SerializeToString())
    charge = evaluation.request_bytes(parsed)
    assert held <= charge <= 3 * held, (held, charge)


@pytest.mark.parametrize(
    ("field", "value", "entry_bytes"),
    [("nodes", 1, 1), ("graph.labels", "", 2), ("graph.op_names", "a", 3)],
)
def test_a_small_request_s_charge_by_its_length_covers_parsing_it(field, value, entry_bytes):
    """A request up to SMALL_REQUEST_BYTES is charged by its length alone: its bytes and
    the parsed message, whatever its fields. The worst cases: one-byte varints (a 4-byte
    entry each) and short strings (a 16-byte view each), a power of two and one more of
    them, so that the arrays have just doubled."""
    entries = 1 << (evaluation.SMALL_REQUEST_BYTES // entry_bytes - 8).bit_length() - 1
    raw = _with(field, [value] * (entries + 1)).SerializeToString()
    assert len(raw) <= evaluation.SMALL_REQUEST_BYTES
    _, held = _held_by_parsing(raw)
    assert held + len(raw) <= evaluation.raw_request_bytes(len(raw)), (held, len(raw))
