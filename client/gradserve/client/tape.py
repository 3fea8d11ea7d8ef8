"""Where Values record their graph: columnar arrays in the wire's layout, no per-node closures.

A tape holds one graph as the ``Graph`` message does (op table, per-node op index, input
counts, flat input ids); a node's id is its position, so ids are a topological order. Leaf
Values (parameters, constants) belong to no tape: each tape gives a leaf it reads a node id
of its own, so a parameter can be read by one tape per training step. Op-node Values point
to their tape, and the tape refers back to them only weakly, so a step's graph is freed as
soon as the user drops its Values. When an op reads Values of two tapes, the smaller tape is
appended to the larger (its order stays topological), so recording never copies a node more
than O(log n) times.
"""

import numbers
import threading
import weakref
from collections.abc import Sequence

import numpy as np

from gradserve.v1 import gradserve_pb2 as pb

CONSTANT = -2  # the _id of a leaf Value the SDK made from a plain number


class Tape:
    __slots__ = (
        "__weakref__",
        "input_counts",
        "input_ids",
        "leaf_ids",
        "node_ops",
        "op_index",
        "op_names",
        "refs",
        "results",
        "sent",
    )

    def __init__(self) -> None:
        self.op_names: list[str] = []
        self.op_index: dict[str, int] = {}  # op name -> its index in node_ops (1-based)
        self.node_ops: list[int] = []  # per node: 0 for a leaf, k for op_names[k - 1]
        self.input_counts: list[int] = []
        self.input_ids: list[int] = []
        # Per node: a leaf's Value itself (leaves do not point back, so no cycle), or a weak
        # reference to an op node's Value.
        self.refs: list = []
        self.leaf_ids: dict = {}  # a user's leaf Value -> its node id (not constants)
        self.sent = False  # once sent, no new graph starts on this tape (see current_tape)
        # Per node, data and grad from the last backward (NaN where unknown), so that a
        # drawing shows them even for intermediate Values the program no longer holds.
        self.results: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.node_ops)

    def leaf_id(self, value) -> int:
        """The node id of a leaf Value on this tape, adding the leaf on first use.

        A constant (a number the SDK wrapped, ``_id == CONSTANT``) is read by one node
        only, so it skips the lookup.
        """
        if value._id != CONSTANT:
            node = self.leaf_ids.get(value)
            if node is not None:
                return node
            self.leaf_ids[value] = len(self.node_ops)
        self.node_ops.append(0)
        self.input_counts.append(0)
        self.refs.append(value)
        return len(self.node_ops) - 1

    def value(self, node: int):
        """The Value of a node, or None when it is gone."""
        ref = self.refs[node]
        return ref() if type(ref) is weakref.ref else ref

    def add_node(self, op: str, inputs: Sequence[int], ref: weakref.ref) -> int:
        """Append an op node reading the node ids ``inputs``; return its id."""
        index = self.op_index.get(op)
        if index is None:
            self.op_names.append(op)
            index = self.op_index[op] = len(self.op_names)
        self.node_ops.append(index)
        self.input_counts.append(len(inputs))
        self.input_ids.extend(inputs)
        self.refs.append(ref)
        return len(self.node_ops) - 1

    def remember(self, nodes: np.ndarray, data: np.ndarray, grads: np.ndarray) -> None:
        """Keep the results of the tape ids ``nodes`` (a backward clears ``results`` first)."""
        if self.results is None or len(self.results[0]) != len(self):
            self.results = (np.full(len(self), np.nan), np.full(len(self), np.nan))
        self.results[0][nodes] = data
        self.results[1][nodes] = grads

    def result(self, node: int) -> tuple[float, float] | None:
        """The remembered (data, grad) of a node, or None."""
        if self.results is None or node >= len(self.results[0]):
            return None
        data, grad = self.results[0][node], self.results[1][node]
        return None if np.isnan(data) else (float(data), float(grad))

    def absorb(self, other: "Tape") -> None:
        """Append ``other``'s nodes after this tape's and move its Values here."""
        self.results = None  # both tapes' remembered results no longer match ids
        new_ids = [0] * len(other)
        start = 0
        for node, (op, count) in enumerate(zip(other.node_ops, other.input_counts, strict=True)):
            if op == 0:
                new_ids[node] = self.leaf_id(other.refs[node])
            else:
                inputs = [new_ids[i] for i in other.input_ids[start : start + count]]
                new_ids[node] = self.add_node(other.op_names[op - 1], inputs, other.refs[node])
            start += count
        for node in range(len(other)):
            value = other.value(node)
            if value is not None and value._tape is other:
                value._tape, value._id = self, new_ids[node]
        other.sent = True  # no Value refers to it now; it is freed

    def subgraph(self, roots: list[int]) -> "Subgraph":
        """The part of the tape that ``roots`` depend on, renumbered, ready to send.

        Usually the whole tape is one graph ending at the root (a training step's loss): then
        it goes as it is. Otherwise one backward sweep over the CSR arrays, a loop rather
        than recursion, marks what the roots read.
        """
        n = max(roots) + 1
        counts = np.array(self.input_counts[:n], dtype=np.int64)
        ids = np.array(self.input_ids[: int(counts.sum())], dtype=np.int64)
        node_ops = np.array(self.node_ops[:n], dtype=np.int64)
        # In a DAG every node reaches a sink (a node nobody reads): when the roots are the
        # only sinks, every node is needed.
        sinks = np.bincount(ids, minlength=n) == 0
        sinks[roots] = False
        if not sinks.any():
            kept = np.arange(n)
            return Subgraph(self, kept, node_ops, counts, ids)
        keep = _reachable(roots, counts.tolist(), ids.tolist(), n)
        kept = np.flatnonzero(keep)
        new_id = np.full(n, -1, dtype=np.int64)
        new_id[kept] = np.arange(len(kept))
        ids = new_id[ids[np.repeat(keep, counts)]]
        return Subgraph(self, kept, node_ops[kept], counts[kept], ids)


def _reachable(roots: list[int], counts: list[int], ids: list[int], n: int) -> np.ndarray:
    """A mask of the nodes the roots read, directly or not: one sweep from the last node down."""
    starts = [0] * n
    total = 0
    for node, count in enumerate(counts):
        starts[node] = total
        total += count
    keep = bytearray(n)
    for root in roots:
        keep[root] = 1
    for node in range(n - 1, -1, -1):
        if keep[node]:
            for i in ids[starts[node] : starts[node] + counts[node]]:
                keep[i] = 1
    return np.frombuffer(bytes(keep), dtype=bool)


class Subgraph:
    """The nodes of a tape to send (``kept``, tape ids in order) and the Graph message."""

    def __init__(self, tape: Tape, kept, node_ops, counts, input_ids) -> None:
        self.tape = tape
        self.kept = kept
        self.node_ops = node_ops
        self.counts = counts
        self.input_ids = input_ids

    def __len__(self) -> int:
        return len(self.kept)

    def position(self, tape_id: int) -> int | None:
        """The id a tape node has in the sent graph, or None when it was left out."""
        i = int(np.searchsorted(self.kept, tape_id))
        return i if i < len(self.kept) and self.kept[i] == tape_id else None

    def value(self, node: int):
        """The Value of a node of the sent graph, or None when it is gone."""
        return self.tape.value(int(self.kept[node])) if 0 <= node < len(self.kept) else None

    def values(self, nodes) -> list:
        """The Values of nodes of the sent graph (None where gone), as ``Tape.value`` gives
        them, inlined: backward resolves every node, and a call per node would double it."""
        refs = self.tape.refs
        weak = weakref.ref
        picked = [refs[i] for i in self.kept[nodes].tolist()]
        return [ref() if type(ref) is weak else ref for ref in picked]

    def proto(self) -> pb.Graph:
        """The Graph message; leaf values and labels are read now, so updates count."""
        values = self.values(np.arange(len(self.kept)))
        leaf_values = [
            v.data for v, op in zip(values, self.node_ops.tolist(), strict=True) if op == 0
        ]
        labels = [v.label if v is not None else "" for v in values]
        for leaf in leaf_values:
            # The exact-type test first: an ABC isinstance check costs 2 us a leaf.
            if type(leaf) is not float and not isinstance(leaf, numbers.Real):
                raise TypeError(f"a leaf's data must be a real number, got {leaf!r}")
        return pb.Graph(
            op_names=self.tape.op_names,
            node_ops=self.node_ops.tolist(),
            input_counts=self.counts.tolist(),
            input_ids=self.input_ids.tolist(),
            leaf_values=leaf_values,
            labels=labels if any(labels) else [],
        )


_local = threading.local()


def current_tape() -> Tape:
    """The tape a new graph (an op on leaves only) starts on, per thread.

    A graph that was sent is finished: the next op on leaves only starts a new tape, so a
    training loop records each step on a tape of its own and memory does not grow.
    """
    ref = getattr(_local, "tape", None)
    tape = ref() if ref is not None else None
    if tape is None or tape.sent:
        tape = Tape()
        _local.tape = weakref.ref(tape)
    return tape


def tape_of(values) -> Tape:
    """One tape holding every Value in ``values``, merging tapes when they differ."""
    tape = None
    for value in values:
        other = value._tape
        if other is None or other is tape:
            continue
        if tape is None:
            tape = other
        elif len(other) > len(tape):
            other.absorb(tape)
            tape = other
        else:
            tape.absorb(other)
    return tape if tape is not None else current_tape()
