"""One ``/metrics`` for every worker of ``gradserve serve --workers N``.

prometheus_client's multiprocess mode, as gunicorn and uvicorn deployments use it: before
forking, the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory; every
metric value a worker records then lives in a memory-mapped file there, named by the
worker's pid, and the supervisor's ``/metrics`` (``MultiProcessCollector``) adds up the
counters and histograms of all files, live workers' and dead ones' alike, so a worker that
dies and is replaced loses no counts and, with a new pid, doubles none. Gauges are per
worker, labelled ``pid`` (``multiprocess_mode="liveall"``); ``worker_exited`` drops a dead
worker's gauges.

A worker's plan cache is read at scrape time in a single process; here the scrape happens
in the supervisor, so each worker copies its cache's figures into metrics every
``MIRROR_INTERVAL`` seconds (``mirror_plan_cache``).
"""

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gradserve.server.engine.plan_cache import PlanCache
from gradserve.server.service import admission, large_calls
from gradserve.server.service import arriving_metrics as arriving
from gradserve.server.service import sending as sending_share

ENV = "PROMETHEUS_MULTIPROC_DIR"
MIRROR_INTERVAL = 0.5  # seconds between a worker's copies of its plan-cache figures


def enabled() -> bool:
    return bool(os.environ.get(ENV))


@contextmanager
def shared_directory() -> Iterator[str]:
    """A fresh directory for the workers' metric files, in the environment of the processes
    forked inside (and of this one); removed, and the variable unset, on exit."""
    directory = tempfile.mkdtemp(prefix="gradserve-metrics-")
    os.environ[ENV] = directory
    # prometheus_client picks its value class when first imported; pick it again now.
    values.ValueClass = values.get_value_class()
    try:
        yield directory
    finally:
        del os.environ[ENV]
        values.ValueClass = values.get_value_class()
        shutil.rmtree(directory, ignore_errors=True)


def serve_all_workers(host: str, port: int, directory: str):
    """Serve ``/metrics``, summed over the worker files in ``directory``, from a daemon
    thread. Returns the HTTP server (``server_port``, ``shutdown()``)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def worker_exited(pid: int) -> None:
    """Drop a dead worker's gauges (its counters stay in the sums)."""
    mark_process_dead(pid)


def mirror_plan_cache(
    cache: PlanCache, budget, arrival, registry: CollectorRegistry, sending=None
) -> None:
    """In a worker: keep the plan cache's lookups (counters), plans and bytes, the memory
    budget's bytes in use, the arriving share's, the sending share's and the large calls'
    share's (gauges labelled by pid), and the read slots taken back (a counter) in metrics,
    updated from a daemon thread."""
    lookups = Counter(
        "gradserve_plan_cache_lookups",
        "Compiled-plan cache lookups, by outcome (a miss compiles, or is NOT_FOUND)",
        ["outcome"],
        registry=registry,
    )
    plans = Gauge(
        "gradserve_plan_cache_plans",
        "Compiled plans held in the cache, by worker process",
        multiprocess_mode="liveall",
        registry=registry,
    )
    held = Gauge(
        "gradserve_plan_cache_bytes",
        "Bytes of compiled plans held in the cache, by worker process",
        multiprocess_mode="liveall",
        registry=registry,
    )
    used = Gauge(
        "gradserve_memory_budget_used_bytes",
        "Bytes of the memory budget held by calls in flight (estimates), by worker process",
        multiprocess_mode="liveall",
        registry=registry,
    )
    arriving_used = Gauge(
        arriving.USED, arriving.USED_HELP, multiprocess_mode="liveall", registry=registry
    )
    waiting = Gauge(
        arriving.WAITING, arriving.WAITING_HELP, multiprocess_mode="liveall", registry=registry
    )
    taken_back = Counter(arriving.TAKEN_BACK, arriving.TAKEN_BACK_HELP, registry=registry)
    replies = Gauge(
        sending_share.USED_METRIC,
        sending_share.USED_HELP,
        multiprocess_mode="liveall",
        registry=registry,
    )
    refused = Counter(sending_share.REFUSED_METRIC, sending_share.REFUSED_HELP, registry=registry)
    large_used = Gauge(
        large_calls.USED_METRIC,
        large_calls.USED_HELP,
        multiprocess_mode="liveall",
        registry=registry,
    )
    large_refused = Counter(large_calls.REFUSED_METRIC, large_calls.REFUSED_HELP, registry=registry)
    held_by_kind, holding = (
        Gauge(name, text, admission.HELD_LABELS, multiprocess_mode="liveall", registry=registry)
        for name, text in [
            (admission.HELD_METRIC, admission.HELD_HELP),
            (admission.HOLDING_METRIC, admission.HOLDING_HELP),
        ]
    )
    hits, misses = lookups.labels("hit"), lookups.labels("miss")

    def copy() -> None:
        seen_hits = seen_misses = seen_taken_back = seen_refused = seen_large_refused = 0
        seen_kinds: set[tuple[str, str]] = set()
        while True:
            now_hits, now_misses = cache.hits, cache.misses
            hits.inc(now_hits - seen_hits)
            misses.inc(now_misses - seen_misses)
            seen_hits, seen_misses = now_hits, now_misses
            plans.set(len(cache))
            held.set(cache.bytes)
            used.set(budget.used)
            by_kind, calls = budget.held_by_kind()
            for kind in seen_kinds - by_kind.keys():  # no call holds as this kind any more
                held_by_kind.labels(*kind).set(0)
                holding.labels(*kind).set(0)
            for kind in by_kind:
                held_by_kind.labels(*kind).set(by_kind[kind])
                holding.labels(*kind).set(calls[kind])
            seen_kinds |= by_kind.keys()
            if sending is not None:
                replies.set(sending.used)
                refused.inc(sending.refused - seen_refused)
                seen_refused = sending.refused
            if budget.large is not None:
                large_used.set(budget.large.used)
                large_refused.inc(budget.large.refused - seen_large_refused)
                seen_large_refused = budget.large.refused
            if arrival is not None:
                arriving_used.set(arrival.used)
                waiting.set(arrival.waiting)
                taken_back.inc(arrival.taken_back - seen_taken_back)
                seen_taken_back = arrival.taken_back
            time.sleep(MIRROR_INTERVAL)

    threading.Thread(target=copy, name="plan-cache-metrics", daemon=True).start()
