"""The GradientService implementation: wire in, engine, wire out.

Every engine error becomes a gRPC status here, in ``_call``, and nowhere else.
"""

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import grpc

from gradserve.server.engine.errors import Cancelled, GraphError, OpFailure, PlanNotFound
from gradserve.server.engine.evaluate import evaluate
from gradserve.server.engine.plan import GraphArrays, Plan, compile_graph
from gradserve.server.engine.plan_cache import PlanCache, small_structure_digest, structure_digest
from gradserve.server.engine.small_call import SmallCalls
from gradserve.server.registry import LoadedOp
from gradserve.server.runtime.isolation import IsolatedEvaluator
from gradserve.server.service import metrics, packed, tracing, wire
from gradserve.server.service.limits import DeadlineExceeded, LimitExceeded, Limits
from gradserve.server.service.logs import CallLog
from gradserve.server.service.status import abort_bad_request, abort_internal
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

DEFAULT_CHUNK_NODES = 65_536  # node results (20 bytes each on the wire): ~1.3 MB a chunk

log = logging.getLogger(__name__)
call_log = CallLog(log)  # the line each call logs, written off the call's path


class _CallRecord:
    """What the per-call log line reports."""

    def __init__(self, span) -> None:
        self.nodes = 0
        self.rows: int | None = None
        self.code = grpc.StatusCode.OK
        self.span = span  # the call's trace span (tracing.NO_SPAN when tracing is off)


@contextmanager
def _call(method: str, context: grpc.ServicerContext) -> Iterator[_CallRecord]:
    """Map engine errors to statuses and write one log line per call.

    Client errors carry a google.rpc.BadRequest field violation; anything unexpected is
    INTERNAL with an error id, never UNKNOWN and never a traceback.
    """
    record = _CallRecord(tracing.start_call(method, context))
    started = time.perf_counter()
    try:
        yield record
    except LimitExceeded as exc:
        record.code = grpc.StatusCode.RESOURCE_EXHAUSTED
        abort_bad_request(context, record.code, exc)
    except GraphError as exc:
        record.code = grpc.StatusCode.INVALID_ARGUMENT
        abort_bad_request(context, record.code, exc)
    except PlanNotFound as exc:
        record.code = grpc.StatusCode.NOT_FOUND
        context.abort(record.code, str(exc))
    except OpFailure as exc:
        # A plugin bug: the client learns which op and node; the plugin's own error text
        # stays in the server log.
        log.error("%s: %s", method, exc, exc_info=exc.__cause__)
        record.code = grpc.StatusCode.INTERNAL
        context.abort(record.code, f"{exc}; the op plugin failed (details in the server log)")
    except DeadlineExceeded as exc:
        record.code = grpc.StatusCode.DEADLINE_EXCEEDED
        context.abort(record.code, str(exc))
    except Cancelled:
        record.code = grpc.StatusCode.CANCELLED
    except GeneratorExit:
        record.code = grpc.StatusCode.CANCELLED
        raise
    except Exception:
        record.code = grpc.StatusCode.INTERNAL
        abort_internal(context, method)
    finally:
        elapsed_ms = (time.perf_counter() - started) * 1e3
        record.span.finish(record.code.name, nodes=record.nodes, rows=record.rows)
        call_log.add(
            method,
            record.nodes,
            record.code.name,
            elapsed_ms,
            rows=record.rows,
            peer=context.peer(),
            trace_id=record.span.trace_id,
        )
        metrics.report_nodes(record.nodes)


def _stop_check(deadline: float) -> tuple[Callable[[], bool], Callable[[], None]]:
    """The engine's ``should_stop`` and the callback that marks the caller gone.

    ``should_stop`` is True once the caller has gone; past the deadline it raises
    DeadlineExceeded. The flag is a list rather than an Event, which costs microseconds
    to make on every call."""
    gone: list[bool] = []

    def should_stop() -> bool:
        if time.monotonic() > deadline:
            raise DeadlineExceeded(
                "the call ran past its deadline (the caller's, or the server's "
                "default-deadline for calls without one) and was stopped"
            )
        return bool(gone)

    return should_stop, functools.partial(gone.append, True)


class _Results:
    """The selected nodes' results, shaped (len(ids), rows) (or lists, for one row from the
    small-call path), and the plan's digest."""

    def __init__(self, ids, values, grads, digest) -> None:
        self.ids, self.values, self.grads, self.digest = ids, values, grads, digest


class GradientServicer(pb_grpc.GradientServiceServicer):
    def __init__(
        self,
        registry: Mapping[str, LoadedOp],
        plan_cache: PlanCache,
        limits: Limits | None = None,
        isolated: IsolatedEvaluator | None = None,
    ) -> None:
        self._registry = registry
        self._ops = {name: loaded.op for name, loaded in registry.items()}
        self._plans = plan_cache
        self._limits = limits or Limits()
        self._isolated = isolated
        self._small_calls = SmallCalls()

    def _plan(self, request: pb.EvaluateRequest, span) -> tuple[Plan, bytes]:
        """The request's plan from the cache, compiling (and caching) it on a miss."""
        if request.plan_digest:
            if wire.has_structure(request.graph):
                raise GraphError(
                    "send either a graph structure or a plan_digest, not both",
                    field="plan_digest",
                )
            with span.step("compiling") as step:
                plan = self._plans.get(request.plan_digest)
                step.set_attribute(tracing.PLAN_CACHE, "miss" if plan is None else "hit")
            if plan is None:
                raise PlanNotFound(request.plan_digest)
            return plan, request.plan_digest
        self._limits.check_sizes(request)
        graph = None
        with span.step("decoding"):
            digest = small_structure_digest(request.graph)
            if digest is None:
                graph = self._graph_arrays(request.graph)
                digest = structure_digest(graph)
        with span.step("compiling") as step:
            plan = self._plans.get(digest)
            step.set_attribute(tracing.PLAN_CACHE, "miss" if plan is None else "hit")
            if plan is None:
                if graph is None:
                    graph = self._graph_arrays(request.graph)
                plan = compile_graph(graph, self._ops)
                if self._isolated is not None and self._isolated.handles(plan):
                    plan = dataclasses.replace(plan, source=graph)  # workers compile it again
                self._plans.put(digest, plan)
        return plan, digest

    def _graph_arrays(self, graph: pb.Graph) -> GraphArrays:
        """The graph's fields as arrays, once its fan-in is known to be within the limit.

        A cached plan passed this check when it was compiled, so a hit skips it."""
        arrays = wire.graph_arrays(graph)
        self._limits.check_fan_in(arrays.input_counts)
        return arrays

    def _evaluate(
        self, request: pb.EvaluateRequest, should_stop: Callable[[], bool], record: _CallRecord
    ) -> _Results:
        plan, digest = self._plan(request, record.span)
        record.nodes = plan.node_count
        with record.span.step("evaluating"):
            return self._evaluate_plan(plan, digest, request, should_stop, record)

    def _evaluate_plan(self, plan, digest, request, should_stop, record) -> _Results:
        small = self._small_calls.evaluate(plan, digest, request, should_stop)
        if small is not None:
            record.rows = 1
            return _Results(*small, digest)
        outputs, seeds = wire.outputs_and_seeds(request, plan)
        selected = wire.selected_nodes(request, plan)
        leaves, allow_non_finite = wire.leaf_rows(request, plan), request.allow_non_finite
        if plan.source is not None:
            values, grads = self._isolated.evaluate(
                plan.source, leaves, outputs, seeds, should_stop, allow_non_finite
            )
        else:
            values, grads = evaluate(
                plan, leaves, outputs, seeds, should_stop, allow_non_finite=allow_non_finite
            )
        record.rows = packed.rows_of(values)
        return _Results(
            selected, values.take(selected, axis=0), grads.take(selected, axis=0), digest
        )

    def _should_stop(self, context: grpc.ServicerContext) -> Callable[[], bool]:
        should_stop, mark_gone = _stop_check(self._limits.deadline(context.time_remaining()))
        context.add_callback(mark_gone)
        return should_stop

    def Evaluate(self, request, context):
        should_stop = self._should_stop(context)
        with _call("Evaluate", context) as record:
            results = self._evaluate(request, should_stop, record)
            with record.span.step("encoding"):
                return packed.evaluate_response(
                    results.ids, results.values, results.grads, results.digest
                )

    def EvaluateStream(self, request, context):
        should_stop = self._should_stop(context)
        with _call("EvaluateStream", context) as record:
            results = self._evaluate(request, should_stop, record)
            rows = packed.rows_of(results.values)
            limit = max(1, DEFAULT_CHUNK_NODES // rows)
            chunk = min(request.chunk_size or limit, limit)
            for start in range(0, len(results.ids), chunk):
                if should_stop():
                    raise Cancelled()
                part = slice(start, start + chunk)
                with record.span.step("encoding"):  # one span a chunk, not its sending
                    encoded = packed.gradient_chunk(
                        results.ids[part],
                        results.values[part],
                        results.grads[part],
                        results.digest,
                        total_nodes=len(results.ids),
                    )
                yield encoded

    def ListOps(self, request, context):
        with _call("ListOps", context):
            return pb.ListOpsResponse(
                ops=[
                    pb.OpInfo(
                        name=name,
                        arity=loaded.op.arity or 0,
                        variadic=loaded.op.variadic,
                        doc=loaded.op.doc,
                        distribution=loaded.distribution,
                        version=loaded.version,
                        entry_point=loaded.entry_point,
                    )
                    for name, loaded in sorted(self._registry.items())
                ]
            )
