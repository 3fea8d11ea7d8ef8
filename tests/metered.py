"""Servers with metrics on, and reading those metrics the way Prometheus does: over HTTP."""

import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prometheus_client.parser import text_string_to_metric_families

from gradserve.server.service.app import RunningServer, running_server
from gradserve.server.service.metrics import CallMetrics, serve_metrics


@contextmanager
def metered_server(registry) -> Iterator[tuple[RunningServer, int]]:
    """A started server on loopback and the port of its metrics endpoint."""
    with ExitStack() as stack:
        metrics = CallMetrics()
        http = serve_metrics(metrics, "127.0.0.1", 0)
        stack.callback(http.shutdown)
        server = stack.enter_context(running_server(registry, metrics=metrics))
        yield server, http.server_port


def scrape(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        return reply.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` in a scrape, 0 when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0
