"""Where Values record their graph: columnar arrays in the wire's layout, no per-node closures.

A tape holds one graph as two lists: per node an op code (``opcodes``: the op and its number
of inputs, 0 for a leaf), and the nodes' input ids back to back. A node's id is its
position, so ids are a topological order. Leaf Values (parameters, constants) belong to no
tape: each tape gives a leaf it reads a node id of its own, so a parameter can be read by one
tape per training step. Op-node Values point to their tape, and the tape refers back to them
only weakly (``Tape.live``), so a step's graph is freed as soon as the user drops its Values.
When an op reads Values of two tapes, the smaller tape is appended to the larger (its order
stays topological), so recording never copies a node more than O(log n) times.
"""

import threading
import weakref

import numpy as np

from gradserve.client import opcodes
from gradserve.client.subgraph import Subgraph, reachable

CONSTANT = -2  # the _id of a leaf Value the SDK made from a plain number


class Tape:
    __slots__ = (
        "__weakref__",
        "codes",
        "forget",
        "index",
        "input_ids",
        "leaf_ids",
        "live",
        "results",
        "sent",
    )

    def __init__(self) -> None:
        self.codes: list[int] = []  # per node: its op code, opcodes.LEAF for a leaf
        self.input_ids: list[int] = []  # each node's inputs, node after node
        # Each leaf Value -> its node id, in node order. A leaf Value does not point back,
        # so no cycle. (A constant is a new Value each time a number is used.)
        self.leaf_ids: dict = {}
        # Weak references to the op-node Values still alive. Most op-node Values are
        # temporaries (``act + w * x`` drops the product at once): each reference removes
        # itself from the set when its Value goes (``forget``, a call into C), rather than
        # staying in a per-node list where the garbage collector walked it again and again
        # (0.8 s of the 1.9 s it took to build a 812k-node MLP).
        self.live: set[weakref.ref] = set()
        self.forget = self.live.discard
        self.sent = False  # once sent, no new graph starts on this tape (see current_tape)
        # Per node, data and grad from the last backward (NaN where unknown), so that a
        # drawing shows them even for intermediate Values the program no longer holds.
        self.results: tuple[np.ndarray, np.ndarray] | None = None
        # For ``Value._prev``, built when first asked and again once the tape grew: where
        # each node's inputs start in ``input_ids``, and node id -> its Value (the leaves')
        # or a weak reference to it (op nodes', so that the tape keeps none alive).
        self.index: tuple[int, list[int], dict, dict] | None = None

    def __len__(self) -> int:
        return len(self.codes)

    def leaf_id(self, value) -> int:
        """The node id of a leaf Value on this tape, adding the leaf on first use."""
        codes = self.codes
        node = self.leaf_ids.setdefault(value, len(codes))
        if node == len(codes):
            codes.append(opcodes.LEAF)
        return node

    def adopt(self, value) -> None:
        """Refer weakly to the op-node Value ``value``, until it goes."""
        self.live.add(weakref.ref(value, self.forget))

    def live_values(self) -> list:
        """The op-node Values still alive."""
        values = (ref() for ref in list(self.live))  # a copy: a Value may go meanwhile
        return [value for value in values if value is not None]

    def inputs_of(self, node: int, made_for) -> tuple:
        """The Values of node ``node``'s inputs (``Value._prev``): the same objects every
        time; for op nodes whose Values the program dropped, ``made_for(tape, id)`` makes
        one, which is adopted."""
        if self.index is None or self.index[0] != len(self.codes):
            counts = opcodes.input_counts(np.array(self.codes, dtype=np.int64))
            starts = [0, *np.cumsum(counts, dtype=np.int64).tolist()]
            leaves = {i: value for value, i in self.leaf_ids.items()}
            ops = {value._id: weakref.ref(value) for value in self.live_values()}
            self.index = (len(self.codes), starts, leaves, ops)
        _, starts, leaves, ops = self.index
        inputs = []
        for i in self.input_ids[starts[node] : starts[node + 1]]:
            value = leaves.get(i)
            if value is None:
                ref = ops.get(i)
                value = ref() if ref is not None else None
                if value is None:
                    value = made_for(self, i)
                    ops[i] = weakref.ref(value)
            inputs.append(value)
        return tuple(inputs)

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
        counts = opcodes.input_counts(np.array(other.codes, dtype=np.int64)).tolist()
        new_ids = [0] * len(other)
        leaves = {node: value for value, node in other.leaf_ids.items()}
        start = 0
        for node, (code, count) in enumerate(zip(other.codes, counts, strict=True)):
            if code == opcodes.LEAF:
                new_ids[node] = self.leaf_id(leaves[node])
            else:
                new_ids[node] = len(self.codes)
                self.codes.append(code)
                self.input_ids.extend(new_ids[i] for i in other.input_ids[start : start + count])
            start += count
        for value in other.live_values():
            if value._tape is other:
                value._tape, value._id = self, new_ids[value._id]
                self.adopt(value)
        other.sent = True  # no Value refers to it now; it is freed

    def subgraph(self, roots: list[int]) -> Subgraph:
        """The part of the tape that ``roots`` depend on, renumbered, ready to send.

        Usually the whole tape is one graph ending at the root (a training step's loss): then
        it goes as it is. Otherwise one backward sweep over the CSR arrays, a loop rather
        than recursion, marks what the roots read.
        """
        n = max(roots) + 1
        codes = np.fromiter(self.codes, dtype=np.int64, count=n)
        counts = opcodes.input_counts(codes)
        ids = np.fromiter(self.input_ids, dtype=np.int64, count=int(counts.sum()))
        # In a DAG every node reaches a sink (a node nobody reads): when the roots are the
        # only sinks, every node is needed.
        sinks = np.bincount(ids, minlength=n) == 0
        sinks[roots] = False
        if not sinks.any():
            return Subgraph(self, np.arange(n), codes, counts, ids)
        keep = reachable(roots, counts.tolist(), ids.tolist(), n)
        kept = np.flatnonzero(keep)
        new_id = np.full(n, -1, dtype=np.int64)
        new_id[kept] = np.arange(len(kept))
        ids = new_id[ids[np.repeat(keep, counts)]]
        return Subgraph(self, kept, codes[kept], counts[kept], ids)


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
