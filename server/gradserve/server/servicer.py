"""The GradientService implementation: wire in, engine, wire out.

Every engine error becomes a gRPC status here, in ``_call``, and nowhere else.
"""

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import grpc
import numpy as np

from gradserve.server import wire
from gradserve.server.errors import Cancelled, GraphError, OpFailure
from gradserve.server.evaluate import evaluate
from gradserve.server.plan import compile_graph
from gradserve.server.registry import LoadedOp
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
    """Map engine errors to statuses and write one log line per call."""
    record = _CallRecord()
    started = time.perf_counter()
    try:
        yield record
    except GraphError as exc:
        record.code = grpc.StatusCode.INVALID_ARGUMENT
        context.abort(record.code, str(exc))
    except OpFailure as exc:
        # A plugin bug: the client learns which op and node; the plugin's own error text
        # stays in the server log.
        log.error("%s: %s", method, exc, exc_info=exc.__cause__)
        record.code = grpc.StatusCode.INTERNAL
        context.abort(record.code, f"{exc}; the op plugin failed (details in the server log)")
    except Cancelled:
        record.code = grpc.StatusCode.CANCELLED
    except GeneratorExit:
        record.code = grpc.StatusCode.CANCELLED
        raise
    except Exception:
        log.exception("%s: unexpected error", method)
        record.code = grpc.StatusCode.INTERNAL
        context.abort(record.code, "internal server error (details in the server log)")
    finally:
        elapsed_ms = (time.perf_counter() - started) * 1e3
        log.info(
            "%s nodes=%d status=%s %.1f ms", method, record.nodes, record.code.name, elapsed_ms
        )


class GradientServicer(pb_grpc.GradientServiceServicer):
    def __init__(self, registry: Mapping[str, LoadedOp]) -> None:
        self._registry = registry
        self._ops = {name: loaded.op for name, loaded in registry.items()}

    def _evaluate(
        self, request: pb.EvaluateRequest, stop: threading.Event, record: _CallRecord
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The selected node ids with their values and gradients."""
        record.nodes = len(request.graph.node_ops)
        plan = compile_graph(wire.graph_arrays(request.graph), self._ops)
        outputs, seeds = wire.outputs_and_seeds(request, plan)
        selected = wire.selected_nodes(request, plan)
        values, grads = evaluate(plan, wire.leaf_values(request), outputs, seeds, stop.is_set)
        return selected, values[selected], grads[selected]

    def Evaluate(self, request, context):
        stop = threading.Event()
        context.add_callback(stop.set)
        with _call("Evaluate", context) as record:
            ids, values, grads = self._evaluate(request, stop, record)
            response = pb.EvaluateResponse()
            wire.fill_results(response, ids, values, grads)
            return response

    def EvaluateStream(self, request, context):
        stop = threading.Event()
        context.add_callback(stop.set)
        with _call("EvaluateStream", context) as record:
            ids, values, grads = self._evaluate(request, stop, record)
            chunk = min(request.chunk_size or DEFAULT_CHUNK_NODES, DEFAULT_CHUNK_NODES)
            for start in range(0, len(ids), chunk):
                if stop.is_set():
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
