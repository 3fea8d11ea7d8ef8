"""`--workers N --metrics-port P`: one scrape of P sees every worker's calls, and a worker
that dies and is replaced neither loses nor doubles counts (prometheus_client's
multiprocess mode)."""

import os
import re
import signal
import subprocess
from types import SimpleNamespace

import pytest
from graphs import neuron
from hardening import wait_until
from metered import sample, scrape
from prometheus_client import CollectorRegistry
from servers import GRADSERVE, Served, health
from test_cli import worker_pids

from bench.ports import free_port
from gradserve.client import connect
from gradserve.server.service import metrics_multiprocess
from gradserve.server.service.admission import MemoryBudget
from gradserve.v1 import gradserve_pb2 as pb


def evaluate_on_new_connections(port: int, calls: int) -> None:
    """Each call on a new channel, so that the kernel spreads them over the workers."""
    g, ids = neuron()
    for _ in range(calls):
        channel, stub = connect(f"127.0.0.1:{port}")
        with channel:
            reply = stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
        assert reply.grads[ids["x1"]] == pytest.approx(-1.5, rel=1e-12)


def evaluations(text: str) -> float:
    return sample(text, "gradserve_calls_total", method="Evaluate", code="OK")


def plan_gauge_pids(text: str) -> set[int]:
    return {int(pid) for pid in re.findall(r'gradserve_plan_cache_plans\{pid="(\d+)"\}', text)}


def handling_pids(log: str) -> set[int]:
    return {int(pid) for pid in re.findall(r" (\d+) INFO \S+: Evaluate ", log)}


def test_one_scrape_counts_every_workers_calls_across_a_restart():
    metrics_port = free_port()
    with Served("--workers", "2", "--metrics-port", str(metrics_port)) as served:
        served.wait_for(r"(?s:worker serving.*){2}")
        workers = worker_pids(served.log)
        evaluate_on_new_connections(served.port, 40)
        assert wait_until(lambda: served.log.count(": Evaluate ") == 40, 10)
        assert handling_pids(served.log) == workers  # both workers took calls

        text = scrape(metrics_port)
        assert evaluations(text) == 40
        assert sample(text, "gradserve_nodes_evaluated_total", method="Evaluate") == 400
        count = "gradserve_call_duration_seconds_count"
        assert sample(text, count, method="Evaluate") == 40
        # Per-worker gauges carry the worker's pid; the plan-cache figures are summed.
        assert wait_until(lambda: plan_gauge_pids(scrape(metrics_port)) == workers, 10)
        text = scrape(metrics_port)  # no request is arriving now: each worker's share is 0
        for pid in workers:
            assert f'gradserve_arriving_used_bytes{{pid="{pid}"}} 0.0' in text
            assert f'gradserve_sending_share_used_bytes{{pid="{pid}"}} 0.0' in text
        assert "gradserve_sending_share_refused_total 0.0" in text
        lookups = "gradserve_plan_cache_lookups_total"

        def lookups_counted() -> float:
            text = scrape(metrics_port)
            return sum(sample(text, lookups, outcome=outcome) for outcome in ("hit", "miss"))

        assert wait_until(lambda: lookups_counted() == 40, 10)  # one lookup a call

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        served.wait_for(rf"worker {victim} exited .*restarting it")
        served.wait_for(r"(?s:worker serving.*){3}")
        assert evaluations(scrape(metrics_port)) == 40  # the dead worker's counts remain
        alive = worker_pids(served.log) - {victim}
        assert wait_until(lambda: plan_gauge_pids(scrape(metrics_port)) == alive, 10)

        evaluate_on_new_connections(served.port, 10)
        assert wait_until(lambda: served.log.count(": Evaluate ") == 50, 10)
        assert evaluations(scrape(metrics_port)) == 50  # and nothing is counted twice
        assert served.stop() == 0
    assert "Traceback" not in served.log


def test_the_workers_metrics_port_in_use_is_a_clear_error():
    with Served("--workers", "1") as served:
        result = subprocess.run(
            [
                GRADSERVE,
                "serve",
                "--port",
                "0",
                "--workers",
                "2",
                "--metrics-port",
                f"{served.port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1  # not a usage error: the address is taken
    assert f"cannot serve metrics on 127.0.0.1:{served.port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_single_process_server_still_serves_its_own_metrics():
    metrics_port = free_port()
    with Served("--workers", "1", "--metrics-port", str(metrics_port)) as served:
        assert health(served.port).returncode == 0
        assert sample(scrape(metrics_port), "gradserve_calls_total", method="Check", code="OK") == 1


class CountedCache:
    """A plan cache's figures, counting the mirror's copies (each reads ``hits`` once)."""

    def __init__(self) -> None:
        self.copies = 0
        self._hits = self.misses = self.bytes = 0

    @property
    def hits(self) -> int:
        self.copies += 1
        return self._hits

    def __len__(self) -> int:
        return 0


def test_a_worker_s_mirror_counts_each_lookup_once_however_often_it_copies():
    """``mirror_plan_cache`` adds to its counters only what the cache counted since its last
    copy (every ``MIRROR_INTERVAL`` s): the counters follow the cache's own totals through
    several copies and never run ahead of them."""
    cache = CountedCache()
    metrics = CollectorRegistry()
    arrival = SimpleNamespace(used=0, waiting=0, taken_back=0)
    metrics_multiprocess.mirror_plan_cache(cache, MemoryBudget(2**20), arrival, metrics)

    def counted() -> tuple:
        return tuple(
            metrics.get_sample_value("gradserve_plan_cache_lookups_total", {"outcome": outcome})
            for outcome in ("hit", "miss")
        )

    for expected in [(3, 1), (5, 1), (5, 4), (12, 4)]:
        cache._hits, cache.misses = expected
        assert wait_until(lambda want=expected: counted() == want, 10), (counted(), expected)
        copies = cache.copies
        assert wait_until(lambda seen=copies: cache.copies >= seen + 2, 10)  # two copies more
        assert counted() == expected
