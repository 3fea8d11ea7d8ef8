"""Prometheus metrics for every gRPC call, served over HTTP on a port of their own.

``CallMetrics`` is a server interceptor: it times each call, records its method and final
status code, and counts the graph nodes of successful Evaluate and EvaluateStream calls. The
node count is the one thing it cannot read from the request (a request by plan_digest
carries no graph), so the servicer reports it with ``report_nodes``. Each instance has its
own registry, so several servers in one process (as in the tests) keep separate counts.
``watch_plan_cache`` adds the plan cache's hits and misses, read from the cache at each
scrape. With several worker processes the metrics work in prometheus_client's multiprocess
mode and one endpoint serves them all (``metrics_multiprocess``).
"""

import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gradserve.server.engine.plan_cache import PlanCache
from gradserve.server.service import metrics_multiprocess

# Seconds; from sub-millisecond calls on tiny graphs to million-node graphs.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# The current call's graph size: the interceptor sets a fresh tally before the handler runs,
# in the handler's thread, and the servicer fills it in.
_call_nodes: ContextVar[list[int] | None] = ContextVar("gradserve_call_nodes", default=None)


def report_nodes(nodes: int) -> None:
    """Tell the metrics interceptor, if one wraps this call, how many nodes its graph has."""
    tally = _call_nodes.get()
    if tally is not None:
        tally[0] = nodes


_HANDLER_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


class CallMetrics(grpc.ServerInterceptor):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "gradserve_calls",
            "gRPC calls finished, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.nodes = Counter(
            "gradserve_nodes_evaluated",
            "Graph nodes evaluated (forward and backward) by successful calls",
            ["method"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gradserve_call_duration_seconds",
            "Time from the call's start to its last response message, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Each method's handler is wrapped once: method -> (its handler, the wrapped one).
        self._wrapped: dict[str, tuple] = {}
        self._children: dict[tuple, object] = {}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        cached = self._wrapped.get(handler_call_details.method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap(handler_call_details.method, handler))
            self._wrapped[handler_call_details.method] = cached
        return cached[1]

    def _wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        method = path.rsplit("/", 1)[-1]
        kind = ("stream" if handler.request_streaming else "unary") + (
            "_stream" if handler.response_streaming else "_unary"
        )
        record = self._record_streaming if handler.response_streaming else self._record_unary
        return _HANDLER_FACTORIES[kind](
            record(method, getattr(handler, kind)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _child(self, metric, *labels: str):
        """``metric.labels(*labels)``, remembered: each lookup there takes a lock."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[metric, labels] = metric.labels(*labels)
        return child

    def _record_unary(self, method: str, behavior: Callable) -> Callable:
        def recorded(request, context):
            started = time.perf_counter()
            code = None
            nodes = [0]
            _call_nodes.set(nodes)
            try:
                response = behavior(request, context)
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                self._finish(method, context, code, started, nodes[0])
            return response

        return recorded

    def _record_streaming(self, method: str, behavior: Callable) -> Callable:
        def recorded(request, context) -> Iterator:
            started = time.perf_counter()
            code = None
            nodes = [0]
            _call_nodes.set(nodes)
            try:
                yield from behavior(request, context)
            except GeneratorExit:
                code = grpc.StatusCode.CANCELLED  # the client went away mid-stream
                raise
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                self._finish(method, context, code, started, nodes[0])

        return recorded

    def _finish(self, method, context, code, started, nodes: int) -> None:
        if code is None:
            # No exception: the handler may still have set a code, or the client cancelled
            # and the handler stopped early without raising.
            code = context.code() or (
                grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED
            )
        self._child(self.latency, method).observe(time.perf_counter() - started)
        self._child(self.calls, method, code.name).inc()
        if code is grpc.StatusCode.OK and nodes:
            self._child(self.nodes, method).inc(nodes)


class _PlanCacheCollector:
    """The plan cache's counters as Prometheus metrics, read when scraped."""

    def __init__(self, cache: PlanCache) -> None:
        self.cache = cache

    def collect(self):
        lookups = CounterMetricFamily(
            "gradserve_plan_cache_lookups",
            "Compiled-plan cache lookups, by outcome (a miss compiles, or is NOT_FOUND)",
            labels=["outcome"],
        )
        lookups.add_metric(["hit"], self.cache.hits)
        lookups.add_metric(["miss"], self.cache.misses)
        yield lookups
        yield GaugeMetricFamily(
            "gradserve_plan_cache_plans", "Compiled plans held in the cache", len(self.cache)
        )


def watch_plan_cache(metrics: CallMetrics, cache: PlanCache) -> None:
    if metrics_multiprocess.enabled():  # scraped in another process: copy the figures
        metrics_multiprocess.mirror_plan_cache(cache, metrics.registry)
    else:
        metrics.registry.register(_PlanCacheCollector(cache))


def serve_metrics(metrics: CallMetrics, host: str, port: int):
    """Serve ``/metrics`` on ``host:port`` (0 picks a free port) from a daemon thread.

    Returns the HTTP server: its ``server_port`` is the bound port, ``shutdown()`` stops it.
    """
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
