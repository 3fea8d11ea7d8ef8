"""Scale-out for real: three `gradserve serve` processes behind HAProxy on loopback.

The balancer runs deploy/haproxy/haproxy.cfg as shipped (bench/balancer.py). An SDK training
loop over five graph structures runs through it, and the tests count what happened through
the servers' and the balancer's own metrics:
(a) each structure is compiled on one server only (routing by the gradserve-structure header);
(b) a server killed mid-loop (SIGKILL) fails no call the SDK returns to the user;
(c) a server stopped with SIGTERM drains: its health says NOT_SERVING, the balancer takes it
    out, and no call fails.
"""

import math
import signal
import threading
from contextlib import ExitStack

import grpc
import pytest
from hardening import wait_until
from metered import sample, scrape
from resilience import health_status
from servers import Served

from bench.balancer import Balancer
from bench.ports import free_port
from gradserve.client import Client, Value

pytestmark = pytest.mark.requires_tool("haproxy")

STRUCTURES = 5
DRAIN_DELAY_S = 3  # longer than the balancer takes to see NOT_SERVING (a check a second)


class Model:
    """``tanh(b + sum(x_i * w_i))`` over ``k`` weights: one graph structure per ``k``."""

    def __init__(self, k: int) -> None:
        self.x = [0.3 * (i + 1) for i in range(k)]
        self.w = [0.1 * (i - 1) for i in range(k)]
        self.b = 0.2

    def step(self, client: Client, rate: float = 0.1) -> None:
        """One training step through ``client``, its gradients checked against the closed
        form: d tanh(s)/dw_i = (1 - tanh(s)^2) x_i, d/db = 1 - tanh(s)^2."""
        w, b = [Value(v) for v in self.w], Value(self.b)
        s = b
        for x, weight in zip(self.x, w, strict=True):
            s = s + x * weight
        loss = s.tanh()
        client.backward(loss)
        t = math.tanh(self.b + sum(x * v for x, v in zip(self.x, self.w, strict=True)))
        assert loss.data == pytest.approx(t, rel=1e-12)
        assert b.grad == pytest.approx(1 - t * t, rel=1e-12)
        for x, weight in zip(self.x, w, strict=True):
            assert weight.grad == pytest.approx((1 - t * t) * x, rel=1e-12)
        self.w = [v - rate * weight.grad for v, weight in zip(self.w, w, strict=True)]
        self.b -= rate * b.grad


class TrainingLoop:
    """Steps over every structure in turn, on a thread, until stopped; what failed is kept."""

    def __init__(self, target: str) -> None:
        self.models = [Model(k) for k in range(1, STRUCTURES + 1)]
        self.steps = 0
        self.failures: list[BaseException] = []
        self._stopping = threading.Event()
        self._client = Client(target, timeout=60)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                for model in self.models:
                    model.step(self._client)
            except BaseException as failure:  # a failed call is what the tests look for
                self.failures.append(failure)
                return
            self.steps += 1

    def run_for(self, steps: int) -> None:
        """Wait until ``steps`` more rounds over every structure are done."""
        target = self.steps + steps
        assert wait_until(lambda: self.steps >= target or self.failures, 120), self.steps
        assert not self.failures, self.failures

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=60)
        self._client.close()


class Cluster:
    def __init__(self, stack: ExitStack, tmp_path) -> None:
        self.metrics_ports = [free_port() for _ in range(3)]
        self.servers = [
            stack.enter_context(
                Served(
                    "--workers", "1", "--metrics-port", str(port),
                    "--drain-delay", str(DRAIN_DELAY_S),
                )
            )
            for port in self.metrics_ports
        ]  # fmt: skip
        targets = [f"127.0.0.1:{served.port}" for served in self.servers]
        self.balancer = stack.enter_context(Balancer(targets, tmp_path))

    def lookups(self, index: int, outcome: str) -> float:
        text = scrape(self.metrics_ports[index])
        return sample(text, "gradserve_plan_cache_lookups_total", outcome=outcome)

    def not_found(self, index: int) -> float:
        """Requests by plan digest that the server had no plan for (calls or stream messages)."""
        text = scrape(self.metrics_ports[index])
        return sum(
            sample(text, "gradserve_calls_total", method=method, code="NOT_FOUND")
            for method in ("Evaluate", "Train")
        )

    def holder(self) -> int:
        """The server that compiled the most structures."""
        misses = [self.lookups(i, "miss") for i in range(3)]
        return misses.index(max(misses))


@pytest.fixture
def cluster(tmp_path):
    with ExitStack() as stack:
        yield Cluster(stack, tmp_path)


def test_each_structure_is_compiled_on_one_server_only(cluster):
    loop = TrainingLoop(cluster.balancer.target)
    loop.run_for(10)
    loop.stop()
    misses = [cluster.lookups(i, "miss") for i in range(3)]
    hits = [cluster.lookups(i, "hit") for i in range(3)]
    assert sum(misses) == STRUCTURES, misses  # one compile per structure, in the whole cluster
    # Each structure has a server (its Train stream routed by its header): they spread out.
    assert sum(1 for m in misses if m) >= 2, misses
    assert sum(hits) == STRUCTURES * (loop.steps - 1), hits  # every later step reused it


def test_a_server_killed_mid_loop_fails_no_call(cluster):
    loop = TrainingLoop(cluster.balancer.target)
    loop.run_for(5)
    victim = cluster.holder()
    held = cluster.lookups(victim, "miss")
    assert held >= 1
    cluster.servers[victim].process.kill()
    loop.run_for(20)
    loop.stop()
    assert not loop.failures
    cluster.balancer.wait_until(lambda states: states.get(f"s{victim + 1}") == "DOWN")
    survivors = [i for i in range(3) if i != victim]
    # Each of the victim's structures reached a survivor by plan digest first, NOT_FOUND (a
    # miss), then whole (a miss that compiles). The survivors' own ones were not compiled again.
    not_found = sum(cluster.not_found(i) for i in survivors)
    assert not_found == held
    assert sum(cluster.lookups(i, "miss") for i in survivors) - not_found == STRUCTURES


def test_a_draining_server_is_taken_out_and_fails_no_call(cluster):
    loop = TrainingLoop(cluster.balancer.target)
    loop.run_for(5)
    victim = cluster.holder()
    name, served = f"s{victim + 1}", cluster.servers[victim]
    served.process.send_signal(signal.SIGTERM)
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        assert wait_until(lambda: health_status(channel) == "NOT_SERVING", 10)
    cluster.balancer.wait_until(lambda states: states.get(name) == "DOWN")
    # The balancer took it out on reading NOT_SERVING, while it still takes new calls: the
    # drain delay has not run out (a check that waited for more bytes after NOT_SERVING
    # ended only when the server stopped, and calls routed meanwhile were cut off).
    with Client(f"127.0.0.1:{served.port}", timeout=30) as direct:
        Model(2).step(direct)
    answered = cluster.balancer.responses()[name]
    loop.run_for(20)
    loop.stop()
    assert not loop.failures
    # The loop has at most one call in flight: the one the balancer may have sent before it
    # took the server out. Nothing went there after.
    assert cluster.balancer.responses()[name] <= answered + 1
    assert served.process.wait(timeout=30) == 0


def test_the_drain_delay_serves_new_calls_while_health_says_not_serving():
    with Served("--workers", "1", "--drain-delay", "30", "--grace", "1") as served:
        model = Model(3)
        with Client(f"127.0.0.1:{served.port}", timeout=30) as client:
            model.step(client)
            served.process.send_signal(signal.SIGTERM)
            with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                assert wait_until(lambda: health_status(channel) == "NOT_SERVING", 10)
            model.step(client)  # still served: the delay has not run out
        served.wait_for("new calls taken for 30 s more")
