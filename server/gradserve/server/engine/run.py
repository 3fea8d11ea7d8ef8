"""The engine's one entry: ``Engine``, which holds a server's ops, plan cache and isolation
workers and decides, here alone, which path evaluates a call, and ``run(plan, inputs,
should_stop)``, the array evaluation that the isolation workers (``runtime/isolation.py``)
call on their side of the pipe.

A call reaches the engine in two steps. ``Engine.answer`` gets the results of a call
straight from the request's fields when that is cheap (one row of a small plan of trusted
ops, on Python floats: ``small_call``), and otherwise declines; ``Engine.cost`` says
beforehand whether that step is quick enough for the caller's event loop. A declined call
is decoded into ``Inputs``, charged to the memory budget by the service, and given to
``Engine.evaluate``: in process (forward and reverse mode, ``evaluate``, or with leaf
tangents forward-over-reverse as well, ``second_order``; groups, chains on floats or
arrays and batch rows are those modules' business) or, for a plan with an isolated op, in
an isolation worker. The service names none of these paths.
"""

import dataclasses
import enum
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from gradserve.ops import Op
from gradserve.server.engine import small_call
from gradserve.server.engine.evaluate import evaluate
from gradserve.server.engine.plan import GraphArrays, Plan, compile_graph, never_stop
from gradserve.server.engine.plan_cache import PlanCache
from gradserve.server.engine.second_order import evaluate_with_tangents, require_second_order
from gradserve.v1.wire_format import packed_varints

StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class Inputs:
    """What one evaluation of a plan needs from a request: the leaf values (one row of
    shape ``(L,)`` or rows ``(B, L)``), the outputs and their seeds, the leaf tangents (the
    leaf values' shape) or None, and whether NaN and Inf may pass."""

    leaves: np.ndarray
    outputs: np.ndarray
    seeds: np.ndarray
    tangents: np.ndarray | None = None
    allow_non_finite: bool = False

    def rows(self, block: slice) -> "Inputs":
        """The same inputs for a block of rows."""
        tangents = None if self.tangents is None else self.tangents[block]
        return Inputs(self.leaves[block], self.outputs, self.seeds, tangents, self.allow_non_finite)


def run(plan: Plan, inputs: Inputs, should_stop: StopCheck = never_stop) -> tuple[np.ndarray, ...]:
    """Every node's values and gradients, and with leaf tangents their value and gradient
    tangents after them, shaped as the leaves' rows (``(n,)`` or ``(n, B)``)."""
    if inputs.tangents is not None:
        return evaluate_with_tangents(
            plan,
            inputs.leaves,
            inputs.tangents,
            inputs.outputs,
            inputs.seeds,
            should_stop,
            inputs.allow_non_finite,
        )
    return evaluate(
        plan, inputs.leaves, inputs.outputs, inputs.seeds, should_stop, inputs.allow_non_finite
    )


class Isolation(Protocol):
    """Worker processes that evaluate plans of untrusted ops (``runtime/isolation.py``)."""

    @property
    def untrusted(self) -> frozenset[str]: ...

    def run(
        self, graph: GraphArrays, inputs: Inputs, should_stop: StopCheck
    ) -> tuple[np.ndarray, ...]: ...


# A selection of more nodes than this is answered on a thread: the answer walks the request's
# ids (a 1-node graph selecting node 0 a million times took 247 ms, 10,000 times 0.42 ms).
QUICK_SELECTED_NODES = 10_000


class Cost(enum.Enum):
    """How long ``Engine.answer`` may take for a call, for where the caller runs it."""

    NONE = "declines at once"  # nothing to run: decode the request into Inputs
    QUICK = "at most about a millisecond"  # worth no hop to a thread
    SLOW = "may take tens of milliseconds"


class Answer(NamedTuple):
    """The selected nodes' ids, values and gradients for the one row of a call, and the
    ids' wire form (packed varints) when it was encoded beforehand.

    With ``by_node``, ``values`` and ``grads`` hold one result per node of the plan and
    ``ids`` is the request's selection (a copy: many ids as a uint32 array), which may
    name a node many times (a million times, in a request of a megabyte): the results of
    a part of the selection are then gathered when that part is sent (``part``), so that
    a stream holds one chunk's results at a time, never the whole selection's."""

    ids: Sequence[int]
    values: list[float]
    grads: list[float]
    wire_ids: bytes | None = None
    by_node: bool = False

    @property
    def count(self) -> int:
        """How many results the answer holds (selected nodes, repeats counted)."""
        return len(self.ids)

    @property
    def quick_to_encode(self) -> bool:
        """Whether encoding the answer is worth no hop to a thread (100,000 results: 10 ms)."""
        return self.count <= QUICK_SELECTED_NODES

    def part(self, start: int, stop: int) -> tuple[Sequence[int], list[float], list[float]]:
        """The ids, values and gradients of the selection's results ``start`` to ``stop``
        (the answer's own sequences when that is all of them: a unary reply's, whose copies
        took 1.4 us of a 400-node step)."""
        if not self.by_node:
            if start == 0 and stop >= len(self.ids):
                return self.ids, self.values, self.grads
            return self.ids[start:stop], self.values[start:stop], self.grads[start:stop]
        ids = self.ids[start:stop]
        if isinstance(ids, np.ndarray):  # many ids, kept as 4-byte ones: ints by the chunk
            ids = ids.tolist()
        values, grads = self.values, self.grads
        return ids, [values[i] for i in ids], [grads[i] for i in ids]


class RequestFields(small_call.EvaluateRequestFields, Protocol):
    """The fields of an EvaluateRequest that the engine reads (it imports no protobuf)."""

    leaf_tangents: object


EVERY_NODE_IDS = "every node's id on the wire"  # the key of ``EveryNodeIds`` in Plan.kept


@dataclass(frozen=True, slots=True)
class EveryNodeIds:
    """A plan's node ids 0 to n - 1 as a packed field's varints, kept with the plan: a
    backward's reply selects every node, and encoding a 812,399-node plan's ids took 8-13
    ms of each call (a 400-node step's, 25 us on floats). Both paths' replies use it."""

    wire: bytes

    def nbytes(self) -> int:
        """The bytes and this object (72 bytes measured with tracemalloc)."""
        return sys.getsizeof(self.wire) + 128

    @classmethod
    def of(cls, node_count: int) -> "EveryNodeIds":
        return cls(packed_varints(np.arange(node_count, dtype=np.uint32)))


class Engine:
    """One server's ops, plan cache and isolation workers, and the one way into its
    evaluation paths. An op that the workers run is marked ``Op.isolated`` here, and so is
    every plan that applies it."""

    def __init__(
        self, ops: Mapping[str, Op], plans: PlanCache, isolation: Isolation | None = None
    ) -> None:
        untrusted = frozenset() if isolation is None else isolation.untrusted
        self.ops = {
            name: dataclasses.replace(op, isolated=True) if name in untrusted else op
            for name, op in ops.items()
        }
        self.plans = plans
        self._isolation = isolation

    def compile(self, digest: bytes, graph: GraphArrays, should_stop: StopCheck) -> Plan:
        """The graph's plan, compiled now and kept in the plan cache under ``digest``."""
        plan = compile_graph(graph, self.ops, should_stop)
        if plan.isolated:
            plan = dataclasses.replace(plan, source=graph)  # the workers compile it again
        self.plans.put(digest, plan)
        return plan

    def cost(self, plan: Plan, request: RequestFields) -> Cost:
        """How long ``answer`` may take for this call."""
        if plan.isolated or request.leaf_tangents or (request.rows or 1) != 1:
            return Cost.NONE
        if len(request.nodes) > QUICK_SELECTED_NODES:
            return Cost.SLOW
        return Cost.QUICK if small_call.quick(plan) else Cost.SLOW

    def answer(
        self, plan: Plan, digest: bytes, request: RequestFields, should_stop: StopCheck
    ) -> Answer | None:
        """The call's results from the request's fields, or None: decode it into
        ``Inputs`` for ``evaluate``, which also reports whatever is wrong with it."""
        if plan.isolated or request.leaf_tangents:  # small_call declines the rest of NONE
            return None
        results = small_call.evaluate(plan, request, should_stop, self.plans, digest)
        if results is None:
            return None
        ids, values, grads, every_node, by_node = results
        wire_ids = self.every_node_ids(plan, digest) if every_node else None
        return Answer(ids, values, grads, wire_ids, by_node)

    def every_node_ids(self, plan: Plan, digest: bytes) -> bytes:
        """The plan's node ids as a reply of every node writes them: encoded on its first
        such reply and kept with it (``EveryNodeIds``), counted by the plan cache."""
        kept = plan.kept
        ids = kept.get(EVERY_NODE_IDS)
        if ids is None:
            ids = kept.setdefault(EVERY_NODE_IDS, EveryNodeIds.of(plan.node_count))
            self.plans.remeasure(digest, plan)
        return ids.wire

    def check_tangents(self, plan: Plan) -> None:
        """Refuse leaf tangents for a plan with an op that has no second derivatives."""
        require_second_order(plan)

    def evaluate(
        self, plan: Plan, digest: bytes, inputs: Inputs, should_stop: StopCheck
    ) -> tuple[np.ndarray, ...]:
        """``run`` in this process or, for an isolated plan, in an isolation worker."""
        if plan.isolated:
            return self._isolation.run(plan.source, inputs, should_stop)
        results = run(plan, inputs, should_stop)
        rows = inputs.leaves.shape[0] if inputs.leaves.ndim > 1 else 1
        if rows > 1 or inputs.tangents is not None:
            self.plans.settle(digest, plan)  # the plan has made its scatters now
        return results
