"""A tape: where Values record their graph, in columns in the wire's layout.

The recording core (``recording``: compiled, or ``recorder`` in Python, which tells how a
tape holds its graph) keeps the columns, the leaves and the op-node Values still alive;
this subclass adds what is not recording: the results a backward remembers for drawings,
a node's inputs as Values (``Value._prev``), and the part of the tape a call sends.
"""

import numpy as np

from gradserve.client import opcodes
from gradserve.client.recording import core
from gradserve.client.subgraph import RecentStructures, Structure, Subgraph, reachable

CONSTANT = core.CONSTANT  # the _id of a leaf Value the SDK made from a plain number
current_tape = core.current_tape
tape_of = core.tape_of


class Tape(core.TapeCore):
    __slots__ = ("index", "results")

    def __init__(self) -> None:
        super().__init__()
        # Per node, data and grad from the last backward (NaN where unknown), so that a
        # drawing shows them even for intermediate Values the program no longer holds.
        self.results: tuple[np.ndarray, np.ndarray] | None = None
        # For ``Value._prev``, built when first asked and again once the tape grew: its
        # length then, where each node's inputs start, the input ids, and node id -> leaf.
        self.index: tuple[int, list[int], list[int], dict] | None = None

    def inputs_of(self, node: int) -> tuple:
        """The Values of node ``node``'s inputs (``Value._prev``): the same objects every
        time; for op nodes whose Values the program dropped, one is made (with the results
        remembered for it) and kept while the program holds it."""
        if self.index is None or self.index[0] != len(self):
            counts = opcodes.input_counts(self.codes_array())
            starts = [0, *np.cumsum(counts, dtype=np.int64).tolist()]
            ids = self.input_ids_array(starts[-1]).tolist()
            leaves = {i: value for value, i in self.leaf_ids.items()}
            self.index = (len(self), starts, ids, leaves)
        _, starts, ids, leaves = self.index
        inputs = []
        for i in ids[starts[node] : starts[node + 1]]:
            value = leaves.get(i)
            if value is None:
                value, made = self.node_value(i)
                if made:
                    value._data, value.grad = self.result(i) or (None, 0.0)
            inputs.append(value)
        return tuple(inputs)

    def remember(self, nodes: np.ndarray, data: np.ndarray, grads: np.ndarray) -> None:
        """Keep the results of the tape ids ``nodes`` (a backward clears ``results`` first)."""
        if self.results is None or len(self.results[0]) != len(self):
            self.results = (np.full(len(self), np.nan), np.full(len(self), np.nan))
        self.results[0][nodes] = data
        self.results[1][nodes] = grads

    def keep_results(self, data: np.ndarray, grads: np.ndarray) -> None:
        """``remember`` the results of every node of the tape, in id order: the arrays
        themselves, which no one else may change."""
        self.results = (data, grads)

    def result(self, node: int) -> tuple[float, float] | None:
        """The remembered (data, grad) of a node, or None."""
        if self.results is None or node >= len(self.results[0]):
            return None
        data, grad = self.results[0][node], self.results[1][node]
        return None if np.isnan(data) else (float(data), float(grad))

    def absorb(self, other: "Tape") -> None:
        """Append ``other``'s nodes after this tape's and move its Values here."""
        self.results = None  # both tapes' remembered results no longer match ids
        super().absorb(other)

    def subgraph(self, roots: list[int]) -> Subgraph:
        """The part of the tape that ``roots`` depend on, renumbered, ready to send; the same
        Structure as the last tape of these columns sent (a training loop's steps)."""
        structure = _recent.find(self, roots)
        if structure is None:
            structure = self._structure(roots)
            _recent.keep(self, roots, structure)
        return Subgraph(self, structure)

    def _structure(self, roots: list[int]) -> Structure:
        """Usually the whole tape is one graph ending at the root (a training step's loss):
        then it goes as it is. Otherwise one backward sweep over the CSR arrays, a loop
        rather than recursion, marks what the roots read."""
        n = max(roots) + 1
        codes = self.codes_array(n)
        counts = opcodes.input_counts(codes)
        ids = self.input_ids_array(int(counts.sum()))
        # In a DAG every node reaches a sink (a node nobody reads): when the roots are the
        # only sinks, every node is needed.
        sinks = np.bincount(ids, minlength=n) == 0
        sinks[roots] = False
        if not sinks.any():
            return Structure(np.arange(n), codes, counts, ids)
        keep = reachable(roots, counts.tolist(), ids.tolist(), n)
        kept = np.flatnonzero(keep)
        new_id = np.full(n, -1, dtype=np.int64)
        new_id[kept] = np.arange(len(kept))
        ids = new_id[ids[np.repeat(keep, counts)]]
        return Structure(kept, codes[kept], counts[kept], ids)


_recent = RecentStructures()  # of every tape: the structure is the columns', not the tape's
