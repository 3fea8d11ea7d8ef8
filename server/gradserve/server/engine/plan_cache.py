"""Compiled plans kept by the digest of their graph's structure, least recently used first
out, bounded by the bytes they hold (``Plan.nbytes``: arrays, scatter indexes, labels,
float programs).

The bound sits inside the server's memory budget: the service gives the calls in flight
the budget less this cache's share (``service/app.py``), so what outlives a call and what
a call holds add up to at most the budget.
"""

import functools
import threading
from collections import OrderedDict

import numpy as np

from gradserve.server.engine.plan import GraphArrays, Plan
from gradserve.v1.structure import structure_digest as shared_structure_digest

BUDGET_SHARE = 4  # by default the cache may hold a quarter of the memory budget


def structure_digest(graph: GraphArrays) -> bytes:
    """A 16-byte digest of everything in a graph except its leaf values: the protos
    package's, which the SDK computes too."""
    return shared_structure_digest(
        graph.op_names, graph.node_ops, graph.input_counts, graph.input_ids, graph.labels
    )


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
    """Thread-safe LRU of plans, bounded by ``max_bytes``. A plan larger than that is not
    kept. A plan's scatters are made on its first batch call, and its float programs on its
    first one-row calls, after it was cached: ``settle`` and ``remeasure`` count them then."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._plans: OrderedDict[bytes, tuple[Plan, int]] = OrderedDict()  # with its bytes
        self._settled: set[bytes] = set()  # plans measured with their scatters made
        self.bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, digest: bytes) -> Plan | None:
        with self._lock:
            entry = self._plans.get(digest)
            if entry is None:
                self.misses += 1
                return None
            self._plans.move_to_end(digest)
            self.hits += 1
            return entry[0]

    def put(self, digest: bytes, plan: Plan) -> None:
        size = plan.nbytes()
        if size > self.max_bytes:
            return
        with self._lock:
            if digest in self._plans:
                return
            self._plans[digest] = (plan, size)
            self.bytes += size
            self._evict()

    def settle(self, digest: bytes, plan: Plan) -> None:
        """Count what ``plan`` (cached under ``digest``) holds after its first batch or
        tangent call, which makes every scatter it will ever have. Later calls cost
        nothing."""
        if digest not in self._settled:
            self.remeasure(digest, plan)
            with self._lock:
                if digest in self._plans:
                    self._settled.add(digest)

    def remeasure(self, digest: bytes, plan: Plan) -> None:
        """Count what ``plan`` (cached under ``digest``) holds now that a call made more
        for it (scatters, a float program); evict if it no longer fits."""
        size = plan.nbytes()
        with self._lock:
            entry = self._plans.get(digest)
            if entry is None or entry[0] is not plan or entry[1] == size:
                return
            self._plans[digest] = (plan, size)
            self._plans.move_to_end(digest)  # just used
            self.bytes += size - entry[1]
            self._evict()

    def _evict(self) -> None:
        while self.bytes > self.max_bytes:
            digest, (_, size) = self._plans.popitem(last=False)
            self._settled.discard(digest)
            self.bytes -= size
            self.evictions += 1

    def __len__(self) -> int:
        return len(self._plans)
