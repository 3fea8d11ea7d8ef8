"""Compiled plans kept by the digest of their graph's structure, least recently used first
out, bounded by the total number of nodes they hold."""

import functools
import hashlib
import threading
from collections import OrderedDict

import numpy as np

from gradserve.server.engine.plan import GraphArrays, Plan

DEFAULT_MAX_NODES = 20_000_000  # about 1 GB of plans for graphs like an MLP


def structure_digest(graph: GraphArrays) -> bytes:
    """A 16-byte digest of everything in a graph except its leaf values.

    SHA-256 over the arrays as uint32 (their wire type): about 11 ms for an 800k-node graph,
    where BLAKE2b over int64 took 31 ms.
    """
    h = hashlib.sha256()
    for text in (graph.op_names, graph.labels):
        h.update(len(text).to_bytes(8, "little"))
        for item in text:
            encoded = item.encode()
            h.update(len(encoded).to_bytes(8, "little") + encoded)
    for array in (graph.node_ops, graph.input_counts, graph.input_ids):
        data = np.ascontiguousarray(array, dtype=np.uint32)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data.data)
    return h.digest()[:16]


# Graphs up to these sizes get their digest from a memo keyed by their fields as tuples.
# Ids below 257 are Python's shared small ints, so a key costs about 8 bytes a wire byte
# (a larger int up to 20): the memo holds about 10 MB at worst, far less for real graphs.
SMALL_GRAPH_NODES = 256
SMALL_GRAPH_BYTES = 2048
SMALL_DIGESTS = 256


def small_structure_digest(graph) -> bytes | None:
    """``structure_digest`` of a small wire ``Graph`` message, or None for a larger one.

    On a warm call for a small graph, finding its plan cost more than evaluating it:
    converting the fields to arrays and hashing them took 33 us for the 10-node neuron,
    where building this memo's key takes 4 us.
    """
    if len(graph.node_ops) > SMALL_GRAPH_NODES or graph.ByteSize() > SMALL_GRAPH_BYTES:
        return None
    return _memoized_digest(  # a slice of a field is a list made in C: tuple() of it is
        (  # quicker than tuple() of the field itself (2.0 us against 3.5 for the neuron)
            tuple(graph.op_names[:]),
            tuple(graph.node_ops[:]),
            tuple(graph.input_counts[:]),
            tuple(graph.input_ids[:]),
            tuple(graph.labels[:]),
        )
    )


@functools.lru_cache(maxsize=SMALL_DIGESTS)
def _memoized_digest(structure: tuple) -> bytes:
    op_names, node_ops, input_counts, input_ids, labels = structure
    return structure_digest(
        GraphArrays(
            op_names,
            np.array(node_ops, dtype=np.int64),
            np.array(input_counts, dtype=np.int64),
            np.array(input_ids, dtype=np.int64),
            labels,
        )
    )


class PlanCache:
    """Thread-safe LRU of plans. A plan larger than the whole budget is not kept."""

    def __init__(self, max_nodes: int = DEFAULT_MAX_NODES) -> None:
        self.max_nodes = max_nodes
        self._plans: OrderedDict[bytes, Plan] = OrderedDict()
        self._nodes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, digest: bytes) -> Plan | None:
        with self._lock:
            plan = self._plans.get(digest)
            if plan is None:
                self.misses += 1
                return None
            self._plans.move_to_end(digest)
            self.hits += 1
            return plan

    def put(self, digest: bytes, plan: Plan) -> None:
        if plan.node_count > self.max_nodes:
            return
        with self._lock:
            if digest in self._plans:
                return
            self._plans[digest] = plan
            self._nodes += plan.node_count
            while self._nodes > self.max_nodes:
                _, evicted = self._plans.popitem(last=False)
                self._nodes -= evicted.node_count

    def __len__(self) -> int:
        return len(self._plans)
