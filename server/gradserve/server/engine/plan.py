"""Compile a columnar graph into a Plan: validate it, then schedule it into groups.

Validation works on whole arrays with NumPy. Scheduling gives every op node a level (one
more than its deepest input; leaves are level 0) and groups the op nodes by (level, op,
input count), so that evaluation makes one vectorized op call per group: no node in a
group reads another node of the same group.
"""

import functools
import itertools
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from gradserve.ops import Op
from gradserve.server.engine.errors import Cancelled, GraphError, cut, quote
from gradserve.server.engine.memory import PlanSizes
from gradserve.server.engine.scatter import Scatter

# Node ids, input positions and levels while compiling. Four bytes each halve the
# compile's peak memory; a plan's own index arrays are intp, which NumPy indexes fastest.
# int32 holds every graph the server accepts: each node and input takes at least a byte
# of a gRPC message (under 2 GiB), and max-nodes (limits.py) is far lower by default.
# compile_graph refuses anything larger, for callers that do not come through the wire.
_ID = np.int32
_MAX_ID = int(np.iinfo(_ID).max)


@dataclass(frozen=True)
class GraphArrays:
    """A graph as parallel arrays, mirroring the wire's ``Graph`` message."""

    op_names: Sequence[str]
    # Integers; from the wire, uint32 arrays, which compile_graph reads without a copy.
    node_ops: np.ndarray  # per node: 0 for a leaf, k for op_names[k - 1]
    input_counts: np.ndarray  # per node: how many inputs
    input_ids: np.ndarray  # all inputs, concatenated in node order
    labels: Sequence[str] = ()


@dataclass(frozen=True)
class Group:
    """Nodes that apply the same op at the same level with the same number of inputs.

    ``args[r]`` holds the r-th input of every node in ``nodes``.
    """

    op: Op
    nodes: np.ndarray  # shape (m,)
    args: np.ndarray  # shape (k, m)

    @functools.cached_property
    def scatter(self) -> Scatter:
        """How to add the gradients of every input position at once (``args`` flattened,
        position by position) into the inputs of several rows; made on the first batch
        call and kept with the cached plan. One for the group, not one per position: a
        ``sum`` of a million inputs would otherwise keep a million of them."""
        return Scatter(self.args.ravel())

    def nbytes(self) -> int:
        """The memory the group holds, its scatter included once it is made."""
        held = _array_bytes(self.nodes, self.args) + _OBJECT_BYTES
        scatter = self.__dict__.get("scatter")
        return held + (scatter.nbytes() if scatter is not None else 0)


@dataclass(frozen=True)
class Stretch:
    """A run of levels that hold one node each: a chain, like ``tanh(tanh(x + c) + c)``.

    One vectorized call per node would cost more in overhead than in arithmetic, so the
    forward runs these nodes one after another in a tight loop, and the backward gets every
    node's local derivatives from one call per part (the nodes grouped by op and input
    count), then propagates gradients through them in a loop.

    With one row of values, both loops run on Python floats in a list that holds the values
    of ``outside`` (the nodes the stretch reads but does not compute), then those of
    ``nodes``: ``local_inputs`` are the inputs as positions in that list.
    """

    nodes: np.ndarray  # shape (s,), in forward order
    ops: tuple[Op, ...]  # the op of each node
    input_offsets: np.ndarray  # shape (s + 1,): node i reads inputs[offsets[i]:offsets[i + 1]]
    inputs: np.ndarray
    parts: tuple[Group, ...]  # the same nodes by (op, input count); args index values
    part_positions: tuple[np.ndarray, ...]  # each part's nodes as positions in ``nodes``
    outside: np.ndarray  # the ids of the nodes it reads that are not in ``nodes``, increasing
    local_inputs: np.ndarray  # ``inputs`` as positions in ``outside`` followed by ``nodes``
    # Each node's scalar forward, when every op has one and every node reads one or two
    # inputs; otherwise None.
    scalars: tuple[Callable[..., float], ...] | None

    # The stretch's index fields are read through these methods only, so that their layout
    # is decoded in one place.

    def lists(self) -> tuple[list[int], list[int], list[int]]:
        """``nodes``, ``input_offsets`` and ``inputs`` as Python lists, for the loops that
        go node by node (a list index is several times quicker than an array's)."""
        return self.nodes.tolist(), self.input_offsets.tolist(), self.inputs.tolist()

    def edges(self, positions: np.ndarray, count: int) -> np.ndarray:
        """The entries of ``inputs`` read by the nodes at ``positions`` (which all read
        ``count`` inputs, as a part's do): shape (count, len(positions)), laid out as a
        Group's ``args``."""
        return self.input_offsets[positions] + np.arange(count)[:, None]

    def readers(self) -> np.ndarray:
        """For each entry of ``inputs``, the position in ``nodes`` of the node reading it."""
        return np.repeat(np.arange(len(self.nodes)), np.diff(self.input_offsets))

    def local_pairs(self) -> tuple[list[int], list[int]]:
        """Each node's first input and second input (-1 for a node with one) as positions
        in the list of ``outside`` followed by ``nodes`` (see ``local_inputs``)."""
        begins = self.input_offsets[:-1]
        two = np.flatnonzero(np.diff(self.input_offsets) == 2)
        second = np.full(len(begins), -1, dtype=begins.dtype)
        second[two] = self.local_inputs[begins[two] + 1]
        return self.local_inputs[begins].tolist(), second.tolist()

    def nbytes(self) -> int:
        """The memory the stretch holds: its arrays, its parts and its per-node tuples."""
        arrays = (self.nodes, self.input_offsets, self.inputs, self.outside, self.local_inputs)
        per_node = _POINTER_BYTES * len(self.ops) * (1 if self.scalars is None else 2)
        return (
            _array_bytes(*arrays, *self.part_positions)
            + sum(part.nbytes() for part in self.parts)
            + per_node
            + 5 * _OBJECT_BYTES  # the stretch and its four tuples
        )


class Kept(Protocol):
    """Something the engine makes for a plan after compiling it and keeps with it."""

    def nbytes(self) -> int: ...


@dataclass(frozen=True)
class Plan:
    """A validated, scheduled graph; immutable, so it can be reused with new leaf values
    (``kept`` aside: what later calls make for it, such as a float program)."""

    node_count: int
    leaves: np.ndarray  # the ids of the leaf nodes, increasing
    steps: tuple[Group | Stretch, ...]  # in an order where every step's inputs come earlier
    labels: tuple[str, ...]
    ops: tuple[Op, ...]  # the ops it applies, each once
    # What its evaluation allocates in proportion to (``memory.evaluation_bytes``): counted
    # while compiling, with stop checks, rather than by a loop over millions of steps on the
    # server's event loop when the call is admitted.
    sizes: PlanSizes
    # The graph it was compiled from, kept only when the plan must be compiled again
    # elsewhere (an isolation worker, for an isolated plan).
    source: GraphArrays | None = None
    # What calls made for the plan and keep with it, by name (None: tried, nothing made),
    # counted in ``nbytes``: the float programs of ``small_call``.
    kept: dict[str, Kept | None] = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def op_names(self) -> frozenset[str]:
        """The names of the ops the plan applies."""
        return frozenset(op.name for op in self.ops)

    @functools.cached_property
    def isolated(self) -> bool:
        """Whether the plan applies an op that the server runs in isolation workers
        (``Op.isolated``): then it is evaluated there, never in the server's process."""
        return any(op.isolated for op in self.ops)

    def describe(self, node: int) -> str:
        """The node id with its label, if it has one, for messages."""
        label = self.labels[node] if self.labels else ""
        return f"{node} ({quote(label)})" if label else str(node)

    def nbytes(self) -> int:
        """The memory the plan holds (what a cache of plans must count): its arrays, its
        steps with the scatters made so far, its labels, its source when it keeps one, and
        what calls made for it. Checked against tracemalloc in tests/test_plan_cache.py."""
        held = _array_bytes(self.leaves) + _text_bytes(self.labels) + 2 * _OBJECT_BYTES
        held += sum(kept.nbytes() for kept in tuple(self.kept.values()) if kept is not None)
        held += sum(step.nbytes() for step in self.steps) + _POINTER_BYTES * len(self.steps)
        if self.source is not None:
            source = self.source
            held += _array_bytes(source.node_ops, source.input_counts, source.input_ids)
            held += _text_bytes(source.op_names) + _text_bytes(source.labels)
        return held


# What a plan's Python objects cost beyond their arrays' data (measured with tracemalloc
# on CPython 3.11 and NumPy 2: an array's header is 112 bytes, a frozen dataclass with its
# __dict__ about 300, a reference in a tuple 8).
_ARRAY_BYTES = 128
_OBJECT_BYTES = 512
_POINTER_BYTES = 8


def _array_bytes(*arrays: np.ndarray) -> int:
    return sum(_ARRAY_BYTES + array.nbytes for array in arrays)


def _text_bytes(texts: Sequence[str]) -> int:
    """A tuple or list of strings: its references and each string (ones of at most one
    character are CPython's shared singletons; a ``Cut`` has a __dict__ too)."""
    strings = sum(
        sys.getsizeof(text) + (0 if type(text) is str else _OBJECT_BYTES)
        for text in texts
        if len(text) > 1
    )
    return _OBJECT_BYTES + _POINTER_BYTES * len(texts) + strings


def never_stop() -> bool:
    """The default stop check of the engine's entry points: nobody ever stops the work."""
    return False


def compile_graph(
    graph: GraphArrays, ops: Mapping[str, Op], should_stop: Callable[[], bool] = never_stop
) -> Plan:
    """Validate ``graph`` against the loaded ``ops`` and schedule it; raise GraphError.

    ``should_stop`` is polled between phases and in every loop (a huge graph takes seconds
    to compile); when it returns True the compilation is abandoned (Cancelled)."""
    stop = _Stop(should_stop)
    node_ops = _as_ids(graph.node_ops, "graph.node_ops", per_node=True)
    counts = _as_ids(graph.input_counts, "graph.input_counts", per_node=True)
    input_ids = _as_ids(graph.input_ids, "graph.input_ids", per_node=False)
    n = len(node_ops)
    _check_lengths(graph, n, counts, input_ids)
    stop.check()
    table = _resolve_ops(graph.op_names, node_ops, ops)
    _check_arity(table, node_ops, counts)
    stop.check()
    offsets = np.zeros(n + 1, dtype=_ID)
    np.cumsum(counts, out=offsets[1:])
    owners = np.repeat(np.arange(n, dtype=_ID), counts)  # the node that reads each input
    _check_inputs(n, owners, input_ids)
    stop.check()
    levels = levels_of(node_ops != 0, counts, offsets, input_ids, owners, stop)
    stop.check()
    steps = _schedule(table, node_ops, counts, offsets, input_ids, levels, stop)
    return Plan(
        node_count=n,
        leaves=np.flatnonzero(node_ops == 0),
        steps=steps,
        # A plan keeps of each label only what a message quotes: a megabyte label costs
        # the cache a few hundred bytes, not a megabyte.
        labels=tuple(map(cut, graph.labels)),
        ops=tuple(table[1:]),  # each listed once, each used (_resolve_ops)
        sizes=_sizes(n, steps, stop),
    )


def _sizes(node_count: int, steps: Sequence[Group | Stretch], stop: "_Stop") -> PlanSizes:
    edges = positions = chain_nodes = 0
    for index, step in enumerate(steps):
        if not index % _POLL_NODES:
            stop.check()
        if isinstance(step, Stretch):
            chain_nodes += len(step.nodes)
            edges += len(step.inputs)
            positions += sum(len(part.args) for part in step.parts)
        else:
            edges += step.args.size
            positions += len(step.args)
    return PlanSizes(node_count, edges, positions, chain_nodes)


def raise_if_stopped(should_stop: Callable[[], bool]) -> None:
    """Raise Cancelled when ``should_stop()`` says the caller has gone."""
    if should_stop():
        raise Cancelled()


class _Stop:
    """``should_stop`` as a check that raises Cancelled."""

    def __init__(self, should_stop: Callable[[], bool] = never_stop) -> None:
        self.should_stop = should_stop

    def check(self) -> None:
        raise_if_stopped(self.should_stop)


def _as_ids(values, field: str, per_node: bool) -> np.ndarray:
    """``values`` as _ID integers, without a copy when they are the wire's uint32.

    A value outside _ID's range is invalid in every integer field of a graph (as an op
    index, an input count or an input id), so it is refused here, before it could wrap.
    ``per_node``: the field has one entry per node, so an entry's index is its node.
    """
    values = np.asarray(values)
    if values.size and (values.min() < 0 or values.max() > _MAX_ID):
        index = int(np.flatnonzero((values < 0) | (values > _MAX_ID))[0])
        raise GraphError(
            f"{field.removeprefix('graph.')}[{index}] = {values[index]} is out of range",
            node=index if per_node else None,
            field=field,
            index=index,
        )
    if values.dtype.kind in "iu" and values.dtype.itemsize == np.dtype(_ID).itemsize:
        return values.view(_ID)  # every value fits, so the bits are the same
    return values.astype(_ID)


def _check_lengths(graph: GraphArrays, n: int, counts: np.ndarray, input_ids: np.ndarray) -> None:
    if n == 0:
        raise GraphError("the graph is empty (node_ops has no entries)", field="graph.node_ops")
    if max(n, len(input_ids)) > _MAX_ID:
        raise GraphError(
            f"the graph has {n} nodes and {len(input_ids)} inputs; at most {_MAX_ID} of "
            "each can be compiled",
            field="graph.node_ops",
        )
    if len(counts) != n:
        raise GraphError(
            f"input_counts has {len(counts)} entries but there are {n} nodes (one per node)",
            field="graph.input_counts",
        )
    if len(graph.labels) not in (0, n):
        raise GraphError(
            f"labels has {len(graph.labels)} entries; give none or one per node ({n})",
            field="graph.labels",
        )
    total = int(counts.sum())
    if total != len(input_ids):
        raise GraphError(
            f"input_counts add up to {total} but input_ids has {len(input_ids)} entries",
            field="graph.input_ids",
        )


def _resolve_ops(
    op_names: Sequence[str], node_ops: np.ndarray, ops: Mapping[str, Op]
) -> list[Op | None]:
    """The op table as Op objects (index 0 is the leaf marker, None).

    Each name must be listed once and be known, used or not: a duplicate or a stray name is
    a client bug that would otherwise go unnoticed."""
    first_listing: dict[str, int] = {}
    for index, name in enumerate(op_names):
        if first_listing.setdefault(name, index) != index:
            raise GraphError(
                f"op_names lists {quote(name)} twice (at {first_listing[name]} and {index}); "
                "list each op once",
                field="graph.op_names",
                index=index,
            )
    out_of_table = np.flatnonzero(node_ops > len(op_names))
    if out_of_table.size:
        node = int(out_of_table[0])
        raise GraphError(
            f"op index {node_ops[node]} is out of range (op_names has {len(op_names)} entries)",
            node=node,
            field="graph.node_ops",
            index=node,
        )
    used = np.zeros(len(op_names) + 1, dtype=bool)
    used[node_ops] = True
    table: list[Op | None] = [None]
    for index, name in enumerate(op_names, start=1):
        if name in ops:
            table.append(ops[name])
        elif used[index]:
            node = int(np.argmax(node_ops == index))
            raise GraphError(
                f"unknown op {quote(name)}", node=node, field="graph.op_names", index=index - 1
            )
        else:
            raise GraphError(
                f"unknown op {quote(name)} (listed in op_names, used by no node)",
                field="graph.op_names",
                index=index - 1,
            )
    return table


def _check_arity(table: list[Op | None], node_ops: np.ndarray, counts: np.ndarray) -> None:
    # Expected input count per op-table entry: -1 for variadic (at least one), 0 for leaves.
    expected = np.array(
        [0 if op is None else (-1 if op.arity is None else op.arity) for op in table], dtype=_ID
    )[node_ops]
    bad = np.flatnonzero(np.where(expected < 0, counts < 1, counts != expected))
    if bad.size:
        node = int(bad[0])
        got = int(counts[node])
        op = table[node_ops[node]]
        if op is None:
            reason = f"a leaf (node_ops 0) must have no inputs, got {got}"
        elif op.arity is None:
            reason = f"op {op.name!r} takes one or more inputs, got none"
        else:
            reason = f"op {op.name!r} takes {op.arity} input(s), got {got}"
        raise GraphError(reason, node=node, field="graph.input_counts", index=node)


def _check_inputs(n: int, owners: np.ndarray, input_ids: np.ndarray) -> None:
    bad = np.flatnonzero(input_ids >= owners)
    if bad.size:
        first = int(bad[0])
        node, source = int(owners[first]), int(input_ids[first])
        if source >= n:
            reason = f"input id {source} is out of range (the graph has {n} nodes)"
        else:
            reason = (
                f"input id {source} is not earlier than the node; ids must be in topological "
                "order, so forward references and cycles are not allowed"
            )
        raise GraphError(reason, node=node, field="graph.input_ids", index=first)


def levels_of(
    is_op: np.ndarray,
    counts: np.ndarray,
    offsets: np.ndarray,
    input_ids: np.ndarray,
    owners: np.ndarray,
    stop: _Stop | None = None,
) -> np.ndarray:
    """Level of each node: 0 for leaves, else one more than its deepest input.

    Whole-array work, in two steps. First, a "link" is an op node whose op-node inputs are
    all one node, its parent (``y = tanh(x)``, ``y = x + c`` with c a leaf): its level is its
    parent's plus one, so pointer jumping gives every link its distance to the first non-link
    ancestor (its root) in about log2(depth) passes. Long chains collapse this way. Second,
    the non-link op nodes get their levels by Kahn's algorithm over the contracted graph, one
    vectorized pass per level, with the links' distances as edge weights. Graphs that are
    deep without being chains would need a pass per level of narrow work; for them the
    plain pass in id order (:func:`_levels_in_id_order`) is quicker, and taken instead.
    """
    stop = stop or _Stop()
    n = len(counts)
    level = np.zeros(n, dtype=_ID)
    from_op = is_op[input_ids]
    edge_src, edge_dst = input_ids[from_op], owners[from_op]  # between op nodes, dst sorted
    del from_op  # here and below: temporaries go early, this is the compile's memory peak
    if edge_src.size == 0:
        level[is_op] = 1
        return level

    # Step 1: links and their distance to their root.
    first_edge = np.flatnonzero(np.diff(edge_dst, prepend=-1))  # of each node with op inputs
    lowest = np.minimum.reduceat(edge_src, first_edge)
    one_parent = lowest == np.maximum.reduceat(edge_src, first_edge)
    # links and root are intp: pointer jumping indexes with them over and over, and NumPy
    # converts index arrays of any other type on every use.
    links = edge_dst[first_edge[one_parent]].astype(np.intp)
    is_link = np.zeros(n, dtype=bool)
    is_link[links] = True
    root = np.arange(n)
    root[links] = lowest[one_parent]
    del first_edge, lowest, one_parent
    dist = is_link.astype(_ID)
    jumping = links
    while jumping.size:
        stop.check()
        up = root[jumping]
        dist[jumping] += dist[up]
        root[jumping] = root[up]
        jumping = jumping[is_link[root[jumping]]]

    # Step 2: Kahn's algorithm over the non-link op nodes. The contracted graph's edges are
    # sorted by source, src_start[v] being the first of node v's.
    into_root = ~is_link[edge_dst]
    parents, dst = edge_src[into_root], edge_dst[into_root]
    del edge_src, edge_dst, into_root
    src, weight = root[parents], dist[parents] + 1
    del parents
    link_root, link_dist = root[links], dist[links]
    del root, dist
    waiting = np.zeros(n, dtype=_ID)  # counted in place: np.bincount's int64 is twice the size
    np.add.at(waiting, dst, _ID(1))
    src_start = np.zeros(n + 1, dtype=_ID)
    np.add.at(src_start[1:], src, _ID(1))
    np.cumsum(src_start, dtype=_ID, out=src_start)
    by_src = np.argsort(src, kind="stable")
    del src
    dst, weight = dst[by_src], weight[by_src]
    del by_src
    frontier = np.flatnonzero(is_op & ~is_link & (waiting == 0))
    level[frontier] = 1
    slot = np.empty(n, dtype=_ID)
    narrow_passes = 0
    while frontier.size:
        stop.check()
        if frontier.size < _NARROW:
            narrow_passes += 1
            if narrow_passes > _NARROW_PASSES:
                return _levels_in_id_order(counts, offsets, input_ids, stop)
        begin, end = src_start[frontier], src_start[frontier + 1]
        sizes = end - begin
        edges = np.repeat(begin - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())
        targets = dst[edges]
        np.maximum.at(level, targets, np.repeat(level[frontier], sizes) + weight[edges])
        np.subtract.at(waiting, targets, _ID(1))  # with a Python int, 10x slower
        ready = targets[waiting[targets] == 0]
        slot[ready] = np.arange(len(ready))  # dedupe without sorting: the last write wins
        frontier = ready[slot[ready] == np.arange(len(ready))]
    level[links] = level[link_root] + link_dist
    return level


_NARROW = 64  # nodes in a Kahn pass below which a pass costs more than it does
_NARROW_PASSES = 4096  # narrow passes tolerated before switching to the per-node loop


def _levels_in_id_order(
    counts: np.ndarray, offsets: np.ndarray, input_ids: np.ndarray, stop: _Stop
) -> np.ndarray:
    """The same levels by one pass in id order (ids are topological): Python lists make the
    per-node step cheap, and there is no recursion, so depth does not matter."""
    level = [0] * len(counts)
    ids = input_ids.tolist()
    for node, (start, count) in enumerate(zip(offsets.tolist(), counts.tolist(), strict=False)):
        if not node % _POLL_NODES:
            stop.check()
        if count == 1:
            level[node] = level[ids[start]] + 1
        elif count == 2:
            a, b = level[ids[start]], level[ids[start + 1]]
            level[node] = (a if a > b else b) + 1
        elif count:
            level[node] = max(level[i] for i in ids[start : start + count]) + 1
    return np.array(level, dtype=_ID)


_POLL_NODES = 65_536  # nodes of a per-node loop between two polls of should_stop
MIN_STRETCH = 16  # consecutive one-node levels that run faster as a Stretch than as Groups


def _schedule(
    table: list[Op | None],
    node_ops: np.ndarray,
    counts: np.ndarray,
    offsets: np.ndarray,
    input_ids: np.ndarray,
    levels: np.ndarray,
    stop: _Stop,
) -> tuple[Group | Stretch, ...]:
    """The op nodes as Groups by (level, op, input count), in level order, except that runs
    of at least MIN_STRETCH one-node groups become Stretches."""
    op_nodes = np.flatnonzero(node_ops != 0)
    if op_nodes.size == 0:
        return ()
    order = op_nodes[np.lexsort((counts[op_nodes], node_ops[op_nodes], levels[op_nodes]))]
    bounds = _group_bounds(order, levels, node_ops, counts)
    single = np.diff(bounds) == 1
    # Runs of single-node groups: where `single` switches on and off.
    edges = np.flatnonzero(np.diff(np.concatenate([[False], single, [False]]).astype(np.int8)))
    runs = [(a, b) for a, b in edges.reshape(-1, 2).tolist() if b - a >= MIN_STRETCH]
    steps: list[Group | Stretch] = []
    group = 0
    for run_start, run_end in [*runs, (len(bounds) - 1, len(bounds) - 1)]:
        for start, end in itertools.pairwise(bounds[group : run_start + 1].tolist()):
            if not len(steps) % 1024:
                stop.check()
            steps.append(_make_group(table, node_ops, counts, offsets, input_ids, order[start:end]))
        if run_end > run_start:
            nodes = order[bounds[run_start] : bounds[run_end]]
            steps.append(_make_stretch(table, node_ops, counts, offsets, input_ids, nodes))
        group = run_end
    return tuple(steps)


def _group_bounds(order, levels, node_ops, counts) -> np.ndarray:
    """Where each (level, op, input count) group starts in ``order``, and its end."""
    keys = np.stack([levels[order], node_ops[order], counts[order]])
    starts = np.flatnonzero(np.any(keys[:, 1:] != keys[:, :-1], axis=0)) + 1
    return np.concatenate([[0], starts, [len(order)]])


def _make_group(table, node_ops, counts, offsets, input_ids, nodes: np.ndarray) -> Group:
    """A Group of nodes that share an op and an input count."""
    arity = int(counts[nodes[0]])
    args = input_ids[offsets[nodes] + np.arange(arity, dtype=_ID)[:, None]]
    return Group(table[node_ops[nodes[0]]], nodes, args.astype(np.intp))


def _make_stretch(table, node_ops, counts, offsets, input_ids, nodes: np.ndarray) -> Stretch:
    sizes = counts[nodes]
    input_offsets = np.concatenate([[0], np.cumsum(sizes)])
    starts = np.repeat(offsets[nodes] - input_offsets[:-1], sizes)
    inputs = input_ids[starts + np.arange(input_offsets[-1], dtype=_ID)].astype(np.intp)
    # int64: the product may not fit _ID.
    kinds = node_ops[nodes].astype(np.int64) * (int(counts.max()) + 1) + sizes
    # With return_inverse, np.unique does not import numpy.ma (a 10 MB transient, once).
    part_kinds, part_of = np.unique(kinds, return_inverse=True)
    parts, positions = [], []
    for part in range(len(part_kinds)):
        where = np.flatnonzero(part_of == part)
        parts.append(_make_group(table, node_ops, counts, offsets, input_ids, nodes[where]))
        positions.append(where)
    ops = tuple(table[k] for k in node_ops[nodes].tolist())
    outside, local_inputs = _local_layout(nodes, inputs)
    has_scalars = all(part.op.scalar is not None for part in parts) and int(sizes.max()) <= 2
    scalars = tuple(op.scalar for op in ops) if has_scalars else None
    return Stretch(
        nodes,
        ops,
        input_offsets,
        inputs,
        tuple(parts),
        tuple(positions),
        outside,
        local_inputs,
        scalars,
    )


def _local_layout(nodes: np.ndarray, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nodes a stretch reads from outside itself, and each input as a position in those
    followed by ``nodes``."""
    touched, position = np.unique(np.concatenate([nodes, inputs]), return_inverse=True)
    is_node = np.zeros(len(touched), dtype=bool)
    is_node[position[: len(nodes)]] = True
    outside = touched[~is_node]
    layout = np.empty(len(touched), dtype=_ID)
    layout[~is_node] = np.arange(len(outside), dtype=_ID)
    layout[position[: len(nodes)]] = len(outside) + np.arange(len(nodes), dtype=_ID)
    return outside, layout[position[len(nodes) :]]
