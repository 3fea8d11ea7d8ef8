"""The part of a tape that a call sends: its nodes renumbered, its Graph message, its Values."""

import functools
import hashlib
import itertools
import threading
from collections import OrderedDict

import numpy as np

from gradserve.client import opcodes, wire
from gradserve.client.recording import core
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1.structure import structure_digest
from gradserve.v1.wire_format import packed_varints

# Field numbers of the Graph message's packed columns.
_NODE_OPS, _INPUT_COUNTS, _INPUT_IDS, _LEAF_VALUES = 2, 3, 4, 5


class Structure:
    """What a call sends of a tape apart from its Values: the nodes (``kept``, tape ids in
    order) with their op codes, input counts and input ids (renumbered to positions in the
    sent graph). Read-only: the Subgraphs of tapes with the same columns share it
    (``RecentStructures``)."""

    def __init__(self, kept, codes, counts, input_ids) -> None:
        for column in (kept, codes, counts, input_ids):
            column.flags.writeable = False
        self.kept = kept
        self.codes = codes
        self.counts = counts
        self.input_ids = input_ids
        # A call's serialized fields but the graph, by what they depend on besides the
        # structure (calls.evaluate_call: a backward's roots and options).
        self.heads: dict[tuple, bytes] = {}

    @functools.cached_property
    def _hashed(self):
        h = hashlib.blake2b(digest_size=16)
        h.update(len(self.kept).to_bytes(8, "little"))
        h.update(self.codes.astype(np.int32).tobytes())
        h.update(self.input_ids.astype(np.int32).tobytes())
        return h

    @functools.cached_property
    def _unlabelled(self) -> bytes:
        return self._hashed.digest()

    def fingerprint(self, labels: list[str]) -> bytes:
        """A digest of the structure with ``labels`` as the SDK records it (op codes, each an
        op name and input count per process, input ids and labels): the key of the server's
        plan digest in ``calls.PlanDigests``. Hashed once per structure; labels, which may
        change from step to step, are hashed each time they are there."""
        if not labels:
            return self._unlabelled
        h = self._hashed.copy()
        for label in labels:
            h.update(label.encode() + b"\0")
        return h.digest()


class RecentStructures:
    """The Structures of the graphs sent last, by their tape's columns: a training loop
    records the same graph every step, on a new tape, and its Structure (the renumbering,
    the columns to send, their fingerprint) is then found by comparing the tape's columns
    with the last ones byte for byte, not worked out and hashed again.

    The most recently used are kept, up to ``MAX_NODES`` nodes in all (about 60 bytes a
    node: the columns' copy and the Structure's arrays, so at most about 4 MB): a small
    graph's step is where this overhead matters; a larger graph's columns are not copied
    and held."""

    MAX_NODES = 1 << 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()  # key -> (columns, Structure)
        self._nodes = 0  # of the tapes kept: the first entry of each key

    def find(self, tape, roots: list[int]) -> Structure | None:
        """The Structure of ``roots`` on a tape whose columns are ``tape``'s, or None."""
        key = (len(tape), *roots)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        return entry[1] if entry is not None and tape.has_columns(entry[0]) else None

    def keep(self, tape, roots: list[int], structure: Structure) -> None:
        key = (len(tape), *roots)
        if key[0] > self.MAX_NODES:
            return
        with self._lock:
            if self._entries.pop(key, None) is not None:
                self._nodes -= key[0]
            self._entries[key] = (tape.columns(), structure)
            self._nodes += key[0]
            while self._nodes > self.MAX_NODES:
                self._nodes -= self._entries.popitem(last=False)[0][0]


class Subgraph:
    """The nodes of a tape to send: a Structure's, with the tape's Values."""

    def __init__(self, tape, structure: Structure) -> None:
        self.tape = tape
        self.structure = structure
        self.kept = structure.kept
        self.codes = structure.codes
        self.counts = structure.counts
        self.input_ids = structure.input_ids
        # The positions and Values of the sent nodes whose Values the tape can reach, and
        # how many of them are leaves: every leaf, first and in order, then the op-node
        # Values still alive. Kept for the call, so its results go to the Values sent.
        # (Every call reads them, for the leaf values: made here rather than by a
        # cached_property, whose lock costs a training step's call about a microsecond.)
        self.held: tuple[np.ndarray, list, int] = tape.held(self.kept)

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
    def _by_position(self) -> dict:
        positions, values, _ = self.held
        return dict(zip(positions.tolist(), values, strict=True))

    def fill(self, nodes: np.ndarray, data: np.ndarray, grads: np.ndarray) -> None:
        """Set ``.data`` and ``.grad`` of the Values of the sent nodes ``nodes`` (int64) still
        alive from ``data`` and ``grads`` (float64), which are then the tape's to keep."""
        positions, values, _ = self.held
        if core.in_order(nodes, len(self.kept)):
            # Every sent node in order (a backward's reply): a result's row is its position.
            # On a million-node backward the general mapping below took 10 ms.
            if len(self.kept) == len(self.tape):
                self.tape.keep_results(data, grads)
            else:
                self.tape.remember(self.kept, data, grads)
            core.set_results(values, positions, data, grads)
            return
        self.tape.remember(self.kept[nodes], data, grads)
        row = np.full(len(self.kept), -1, dtype=np.int64)
        row[nodes] = np.arange(len(nodes))
        rows = row[positions]
        if (rows < 0).any():
            values = list(itertools.compress(values, (rows >= 0).tolist()))
            rows = rows[rows >= 0]
        core.set_results(values, rows, data, grads)

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
