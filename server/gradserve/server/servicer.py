"""The GradientService implementation: wire in, engine, wire out.

Every engine error becomes a gRPC status here, in ``_call``, and nowhere else.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import grpc
import numpy as np

from gradserve.server import wire
from gradserve.server.errors import Cancelled, GraphError, OpFailure
from gradserve.server.evaluate import evaluate
from gradserve.server.isolation import IsolatedEvaluator
from gradserve.server.limits import DeadlineExceeded, LimitExceeded, Limits
from gradserve.server.plan import compile_graph
from gradserve.server.registry import LoadedOp
from gradserve.server.status import abort_bad_request, abort_internal
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

DEFAULT_CHUNK_NODES = 65_536  # 20 bytes a node on the wire: about 1.3 MB per chunk

log = logging.getLogger(__name__)


class _CallRecord:
    """What the per-call log line reports."""

    def __init__(self) -> None:
        self.nodes = 0
        self.code = grpc.StatusCode.OK


@contextmanager
def _call(method: str, context: grpc.ServicerContext) -> Iterator[_CallRecord]:
    """Map engine errors to statuses and write one log line per call.

    Client errors carry a google.rpc.BadRequest field violation; anything unexpected is
    INTERNAL with an error id, never UNKNOWN and never a traceback.
    """
    record = _CallRecord()
    started = time.perf_counter()
    try:
        yield record
    except LimitExceeded as exc:
        record.code = grpc.StatusCode.RESOURCE_EXHAUSTED
        abort_bad_request(context, record.code, exc)
    except GraphError as exc:
        record.code = grpc.StatusCode.INVALID_ARGUMENT
        abort_bad_request(context, record.code, exc)
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
        log.info(
            "%s nodes=%d status=%s %.1f ms", method, record.nodes, record.code.name, elapsed_ms
        )


def _stop_check(stop: threading.Event, deadline: float) -> Callable[[], bool]:
    """The engine's ``should_stop``: True once the caller has gone; past the deadline it
    raises DeadlineExceeded."""

    def should_stop() -> bool:
        if time.monotonic() > deadline:
            raise DeadlineExceeded(
                "the call ran past its deadline (the caller's, or the server's "
                "default-deadline for calls without one) and was stopped"
            )
        return stop.is_set()

    return should_stop


class GradientServicer(pb_grpc.GradientServiceServicer):
    def __init__(
        self,
        registry: Mapping[str, LoadedOp],
        limits: Limits | None = None,
        isolated: IsolatedEvaluator | None = None,
    ) -> None:
        self._registry = registry
        self._ops = {name: loaded.op for name, loaded in registry.items()}
        self._limits = limits or Limits()
        self._isolated = isolated

    def _evaluate(
        self, request: pb.EvaluateRequest, should_stop: Callable[[], bool], record: _CallRecord
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The selected node ids with their values and gradients."""
        record.nodes = len(request.graph.node_ops)
        self._limits.check_sizes(request)
        graph = wire.graph_arrays(request.graph)
        self._limits.check_fan_in(graph.input_counts)
        plan = compile_graph(graph, self._ops)
        outputs, seeds = wire.outputs_and_seeds(request, plan)
        selected = wire.selected_nodes(request, plan)
        leaves, allow_non_finite = wire.leaf_values(request), request.allow_non_finite
        if self._isolated is not None and self._isolated.handles(plan):
            values, grads = self._isolated.evaluate(
                graph, leaves, outputs, seeds, should_stop, allow_non_finite
            )
        else:
            values, grads = evaluate(
                plan, leaves, outputs, seeds, should_stop, allow_non_finite=allow_non_finite
            )
        return selected, values[selected], grads[selected]

    def _should_stop(self, context: grpc.ServicerContext) -> Callable[[], bool]:
        stop = threading.Event()
        context.add_callback(stop.set)
        return _stop_check(stop, self._limits.deadline(context.time_remaining()))

    def Evaluate(self, request, context):
        should_stop = self._should_stop(context)
        with _call("Evaluate", context) as record:
            ids, values, grads = self._evaluate(request, should_stop, record)
            response = pb.EvaluateResponse()
            wire.fill_results(response, ids, values, grads)
            return response

    def EvaluateStream(self, request, context):
        should_stop = self._should_stop(context)
        with _call("EvaluateStream", context) as record:
            ids, values, grads = self._evaluate(request, should_stop, record)
            chunk = min(request.chunk_size or DEFAULT_CHUNK_NODES, DEFAULT_CHUNK_NODES)
            for start in range(0, len(ids), chunk):
                if should_stop():
                    raise Cancelled()
                part = slice(start, start + chunk)
                message = pb.GradientChunk(total_nodes=len(ids))
                wire.fill_results(message, ids[part], values[part], grads[part])
                yield message

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
