"""The part of a tape that a call sends: its nodes renumbered, its Graph message, its Values."""

import functools
import itertools
import numbers
import operator

import numpy as np

from gradserve.client import opcodes, wire
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
        tape = self.tape
        ops = tape.live_values()
        tape_ids = np.concatenate(
            [
                np.fromiter(tape.leaf_ids.values(), dtype=np.int64, count=len(tape.leaf_ids)),
                np.array([value._id for value in ops], dtype=np.int64),
            ]
        )
        values = [*tape.leaf_ids, *ops]
        positions = np.searchsorted(self.kept, tape_ids)
        inside = positions < len(self.kept)
        inside[inside] = self.kept[positions[inside]] == tape_ids[inside]
        if not inside.all():
            values = list(itertools.compress(values, inside.tolist()))
        return positions[inside], values, int(inside[: len(tape.leaf_ids)].sum())

    @functools.cached_property
    def _by_position(self) -> dict:
        positions, values, _ = self.held
        return dict(zip(positions.tolist(), values, strict=True))

    def fill(self, nodes: np.ndarray, data: np.ndarray, grads: np.ndarray) -> None:
        """Set ``.data`` and ``.grad`` of the Values of the sent nodes ``nodes`` still alive."""
        self.tape.remember(self.kept[nodes], data, grads)
        positions, values, _ = self.held
        row = np.full(len(self.kept), -1, dtype=np.int64)
        row[nodes] = np.arange(len(nodes))
        rows = row[positions]
        if (rows < 0).any():
            values = list(itertools.compress(values, (rows >= 0).tolist()))
            rows = rows[rows >= 0]
        for value, x, g in zip(values, data[rows].tolist(), grads[rows].tolist(), strict=True):
            value._data, value.grad = x, g

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
        if not any(map(_label, values)):
            return []
        labels = [""] * len(self.kept)
        for position, value in zip(positions.tolist(), values, strict=True):
            labels[position] = value.label
        return labels

    def leaf_values(self) -> np.ndarray:
        """The sent leaves' ``.data``, read now, so that updates since recording count."""
        _, values, leaves = self.held
        data = list(map(_data, values[:leaves]))
        # The exact-type test first, in bulk: an ABC isinstance check costs 2 us a leaf.
        if set(map(type, data)) - {float}:
            for x in data:
                if type(x) is not float and not isinstance(x, numbers.Real):
                    raise TypeError(f"a leaf's data must be a real number, got {x!r}")
        return np.array(data, dtype=np.float64)


_data, _label = operator.attrgetter("_data"), operator.attrgetter("label")


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
