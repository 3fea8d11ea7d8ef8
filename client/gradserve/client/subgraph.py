"""The part of a tape that a call sends: its nodes renumbered, its Graph message, its Values."""

import functools
import itertools

import numpy as np

from gradserve.client import opcodes, wire
from gradserve.client.recording import core
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1.structure import structure_digest
from gradserve.v1.wire_format import packed_varints

# Field numbers of the Graph message's packed columns.
_NODE_OPS, _INPUT_COUNTS, _INPUT_IDS, _LEAF_VALUES = 2, 3, 4, 5


class Subgraph:
    """The nodes of a tape to send (``kept``, tape ids in order) with their op codes, input
    counts and input ids (renumbered to positions in the sent graph)."""

    def __init__(self, tape, kept, codes, counts, input_ids) -> None:
        self.tape = tape
        self.kept = kept
        self.codes = codes
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
        return self._by_position.get(node)

    def values(self, nodes) -> list:
        """The Values of nodes of the sent graph (None where gone)."""
        return list(map(self._by_position.get, np.asarray(nodes).tolist()))

    @functools.cached_property
    def held(self) -> tuple[np.ndarray, list, int]:
        """The positions and Values of the sent nodes whose Values the tape can reach, and
        how many of them are leaves: every leaf, first and in order, then the op-node
        Values still alive. Kept for the call, so its results go to the Values sent."""
        return self.tape.held(self.kept)

    @functools.cached_property
    def _by_position(self) -> dict:
        positions, values, _ = self.held
        return dict(zip(positions.tolist(), values, strict=True))

    def fill(self, nodes: np.ndarray, data: np.ndarray, grads: np.ndarray) -> None:
        """Set ``.data`` and ``.grad`` of the Values of the sent nodes ``nodes`` still alive
        (``data`` and ``grads`` are then the tape's to keep)."""
        positions, values, _ = self.held
        if len(nodes) == len(self.kept) and np.array_equal(nodes, np.arange(len(nodes))):
            # Every sent node in order (a backward's reply): a result's row is its position.
            # On a million-node backward the general mapping below took 10 ms.
            if len(self.kept) == len(self.tape):
                self.tape.keep_results(data, grads)
            else:
                self.tape.remember(self.kept, data, grads)
            core.set_results(values, data[positions], grads[positions])
            return
        self.tape.remember(self.kept[nodes], data, grads)
        row = np.full(len(self.kept), -1, dtype=np.int64)
        row[nodes] = np.arange(len(nodes))
        rows = row[positions]
        if (rows < 0).any():
            values = list(itertools.compress(values, (rows >= 0).tolist()))
            rows = rows[rows >= 0]
        core.set_results(values, data[rows], grads[rows])

    def graph(self, leaf_values: np.ndarray, labels: list[str] | None = None) -> bytes:
        """The Graph message, serialized, with ``leaf_values`` (``leaf_values()``, or rows
        of them); labels are read now unless given (``labels()``). Its structure's digest,
        as the server computes it, is then in ``digest``."""
        names, node_ops = opcodes.op_table(self.codes)
        labels = self.labels() if labels is None else labels
        self.digest = structure_digest(names, node_ops, self.counts, self.input_ids, labels)
        return (
            pb.Graph(op_names=names, labels=labels).SerializeToString()
            + wire.packed(_NODE_OPS, packed_varints(node_ops))
            + wire.packed(_INPUT_COUNTS, packed_varints(self.counts))
            + wire.packed(_INPUT_IDS, packed_varints(self.input_ids))
            + wire.packed(_LEAF_VALUES, wire.doubles(leaf_values))
        )

    @staticmethod
    def leaves_only(leaf_values: np.ndarray) -> bytes:
        """A Graph message with only ``leaf_values``, for a request naming a plan digest."""
        return wire.packed(_LEAF_VALUES, wire.doubles(leaf_values))

    def labels(self) -> list[str]:
        """Every node's label, or none when no Value has one."""
        positions, values, _ = self.held
        if not core.any_label(values):
            return []
        labels = [""] * len(self.kept)
        for position, value in zip(positions.tolist(), values, strict=True):
            labels[position] = value.label
        return labels

    def leaf_values(self) -> np.ndarray:
        """The sent leaves' ``.data``, read now, so that updates since recording count."""
        _, values, leaves = self.held
        return core.leaf_data(values, leaves)


def reachable(roots: list[int], counts: list[int], ids: list[int], n: int) -> np.ndarray:
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
