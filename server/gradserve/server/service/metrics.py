"""Prometheus metrics for every gRPC call, served over HTTP on a port of their own.

``CallMetrics`` times each call, records its method and the status code its client
received, and counts the graph nodes of successful Evaluate and EvaluateStream calls and
Train messages (a Train stream's own end counts no nodes: its messages did). Each
instance has its own registry, so several servers in one process (as in the tests) keep
separate counts. ``watch_plan_cache`` adds the plan cache's hits and misses, read from the
cache at each scrape. With several worker processes the metrics work in prometheus_client's
multiprocess mode and one endpoint serves them all (``metrics_multiprocess``).
"""

import asyncio
import contextlib
import inspect
import time
from bisect import bisect_left
from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gradserve.server.engine.plan_cache import PlanCache
from gradserve.server.service import arriving_metrics as arriving
from gradserve.server.service import large_calls, metrics_multiprocess
from gradserve.server.service import sending as sending_share
from gradserve.server.service.admission import (
    HELD_HELP,
    HELD_LABELS,
    HELD_METRIC,
    HOLDING_HELP,
    HOLDING_METRIC,
)

# Seconds; from sub-millisecond calls on tiny graphs to million-node graphs.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TALLY_S = 0.1  # a stream's successful messages reach the metrics at most this late


class CallMetrics:
    """The call counters and latencies of one server.

    The GradientService's calls are recorded by their CallScope, which knows the status the
    client received; ``interceptor()`` records the other services' (health, reflection).
    """

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
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):
        """``metric.labels(*labels)``, remembered: each lookup there takes a lock."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[metric, labels] = metric.labels(*labels)
        return child

    def record(self, method: str, code: grpc.StatusCode, seconds: float, nodes: int = 0) -> None:
        self._child(self.latency, method).observe(seconds)
        self._child(self.calls, method, code.name).inc()
        if code is grpc.StatusCode.OK and nodes:
            self._child(self.nodes, method).inc(nodes)

    def record_successes(self, method: str, tally: "StreamTally") -> None:
        """Record ``tally``'s successful calls (OK) at once: the same counts as recording
        each, with the latencies' sum added up first.

        prometheus_client has no way to observe many values at once, so the histogram's
        bucket and sum values are added to directly (``tests/test_metrics.py`` checks the
        exposition against recording each call)."""
        latency = self._child(self.latency, method)
        latency._sum.inc(tally.seconds)
        for bucket, count in zip(latency._buckets, tally.buckets, strict=True):
            if count:
                bucket.inc(count)
        self._child(self.calls, method, "OK").inc(tally.calls)
        if tally.nodes:
            self._child(self.nodes, method).inc(tally.nodes)

    def interceptor(self, skip_prefix: str) -> grpc.aio.ServerInterceptor:
        """Records every call whose method does not start with ``skip_prefix``."""
        return _OtherServices(self, skip_prefix)


class StreamTally:
    """The successful messages of one stream, added up before they reach the metrics: a
    message then costs a few additions on the event loop, where recording it took four
    locked updates (about 6 of the 36 µs the server's Python spent on a neuron's message).
    What is added up is recorded when the stream ends, and at most ``TALLY_S`` after the
    first message not yet recorded. Failed messages are recorded at once, by their call."""

    _BOUNDS = (*LATENCY_BUCKETS, float("inf"))  # the histogram's, as prometheus_client has them

    def __init__(self, metrics: CallMetrics, method: str, loop: asyncio.AbstractEventLoop) -> None:
        self._metrics = metrics
        self._method = method
        self._loop = loop
        self._due: asyncio.TimerHandle | None = None
        self._clear()

    def _clear(self) -> None:
        self.calls = self.nodes = 0
        self.seconds = 0.0
        self.buckets = [0] * len(self._BOUNDS)

    def add(self, seconds: float, nodes: int) -> None:
        """One successful message, of ``seconds`` and ``nodes``."""
        self.buckets[bisect_left(self._BOUNDS, seconds)] += 1  # le: the first bound >= it
        self.calls += 1
        self.seconds += seconds
        self.nodes += nodes
        if self._due is None:
            self._due = self._loop.call_later(TALLY_S, self.flush)

    def flush(self) -> None:
        """Record what is added up."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if self.calls:
            self._metrics.record_successes(self._method, self)
            self._clear()


class _OtherServices(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: CallMetrics, skip_prefix: str) -> None:
        self._metrics = metrics
        self._skip = skip_prefix
        self._wrapped: dict[str, tuple] = {}  # method -> (its handler, the wrapped one)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        path = handler_call_details.method
        if handler is None or path.startswith(self._skip):
            return handler
        cached = self._wrapped.get(path)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[path] = (handler, self._wrap(path, handler))
        return cached[1]

    def _wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        method = path.rsplit("/", 1)[-1]
        kind = ("stream" if handler.request_streaming else "unary") + (
            "_stream" if handler.response_streaming else "_unary"
        )
        behavior = getattr(handler, kind)
        record = self._metrics.record

        @contextlib.contextmanager
        def recording(context):
            """Record the call's method, final status and duration when it ends."""
            started, code = time.perf_counter(), None
            try:
                yield
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = _code_of(context) or grpc.StatusCode.UNKNOWN
                raise
            finally:
                code = code or _code_of(context) or grpc.StatusCode.OK
                record(method, code, time.perf_counter() - started)

        if inspect.isasyncgenfunction(behavior):

            async def recorded(request, context):
                with recording(context):
                    async for response in behavior(request, context):
                        yield response

        else:

            async def recorded(request, context):
                with recording(context):
                    return await behavior(request, context)

        return handler._replace(**{kind: recorded})


def _code_of(context) -> grpc.StatusCode | None:
    code = context.code()
    if isinstance(code, int):  # grpc.aio may report the raw status number
        return next((c for c in grpc.StatusCode if c.value[0] == code), None)
    return code


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
        yield GaugeMetricFamily(
            "gradserve_plan_cache_bytes",
            "Bytes of compiled plans held in the cache (at most --plan-cache-mb)",
            self.cache.bytes,
        )


class _BudgetCollector:
    """The memory budget's bytes held by calls, and the share of requests still arriving
    (``arrival.ArrivalGate``) and the sending share (``sending.SendingShare``) in use, read
    when scraped."""

    def __init__(self, budget, arrival, sending) -> None:
        self.budget = budget
        self.arrival = arrival
        self.sending = sending

    def collect(self):
        yield GaugeMetricFamily(
            "gradserve_memory_budget_used_bytes",
            "Bytes of the memory budget held by calls in flight (estimates)",
            self.budget.used,
        )
        yield from held_by_kind(self.budget)
        if self.sending is not None:
            share = self.sending
            yield GaugeMetricFamily(sending_share.USED_METRIC, sending_share.USED_HELP, share.used)
            yield CounterMetricFamily(
                sending_share.REFUSED_METRIC, sending_share.REFUSED_HELP, share.refused
            )
        if self.budget.large is not None:
            share = self.budget.large
            yield GaugeMetricFamily(large_calls.USED_METRIC, large_calls.USED_HELP, share.used)
            yield CounterMetricFamily(
                large_calls.REFUSED_METRIC, large_calls.REFUSED_HELP, share.refused
            )
        if self.arrival is not None:
            gate = self.arrival
            yield GaugeMetricFamily(arriving.USED, arriving.USED_HELP, gate.used)
            yield GaugeMetricFamily(arriving.WAITING, arriving.WAITING_HELP, gate.waiting)
            yield CounterMetricFamily(
                arriving.TAKEN_BACK, arriving.TAKEN_BACK_HELP, gate.taken_back
            )


def held_by_kind(budget) -> Iterator[GaugeMetricFamily]:
    """The budget's ledger by kind of holder (``MemoryBudget.held_by_kind``) as two gauges."""
    held, calls = budget.held_by_kind()
    held_bytes = GaugeMetricFamily(HELD_METRIC, HELD_HELP, labels=HELD_LABELS)
    holding = GaugeMetricFamily(HOLDING_METRIC, HOLDING_HELP, labels=HELD_LABELS)
    for kind in sorted(held):
        held_bytes.add_metric(list(kind), held[kind])
        holding.add_metric(list(kind), calls[kind])
    yield held_bytes
    yield holding


def watch_plan_cache(
    metrics: CallMetrics, cache: PlanCache, budget, arrival=None, sending=None
) -> None:
    """Report the plan cache's lookups and size, the memory budget's bytes in use and, given
    the server's ``ArrivalGate`` and ``SendingShare``, the share of requests still arriving
    and the sending share in use."""
    if metrics_multiprocess.enabled():  # scraped in another process: copy the figures
        metrics_multiprocess.mirror_plan_cache(
            cache, budget, arrival, metrics.registry, sending=sending
        )
    else:
        metrics.registry.register(_PlanCacheCollector(cache))
        metrics.registry.register(_BudgetCollector(budget, arrival, sending))


def serve_metrics(metrics: CallMetrics, host: str, port: int):
    """Serve ``/metrics`` on ``host:port`` (0 picks a free port) from a daemon thread.

    Returns the HTTP server: its ``server_port`` is the bound port, ``shutdown()`` stops it.
    """
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
