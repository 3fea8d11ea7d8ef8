"""HAProxy in front of gradserve servers on loopback, configured as deployed.

The balancer runs ``deploy/haproxy/haproxy.cfg`` unchanged, plus a second file naming the
servers, as Docker Compose and Kubernetes do with their own. Used by the scale-out test
(tests/test_scale_out.py) and the scale-out benchmark (``python -m bench.scale_out``).
"""

import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.ports import free_port

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy" / "haproxy.cfg"
START_TIMEOUT = 30.0


def backend_config(targets: list[str]) -> str:
    """The servers' file: server ``s1`` is ``targets[0]``, and so on."""
    servers = "".join(f"    server s{i} {target}\n" for i, target in enumerate(targets, 1))
    return f"backend gradserve from servers\n{servers}"


class Balancer:
    """``haproxy`` in the foreground before ``targets``; ``target`` is its gRPC address.

    Construction returns once the balancer has found every server up."""

    def __init__(self, targets: list[str], workdir: Path) -> None:
        servers = workdir / "servers.cfg"
        servers.write_text(backend_config(targets))
        self.port, self.metrics_port = free_port(), free_port()
        self.target = f"127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "GRADSERVE_LB_BIND": self.target,
            "GRADSERVE_LB_METRICS_BIND": f"127.0.0.1:{self.metrics_port}",
        }
        command = [shutil.which("haproxy") or "haproxy", "-db", "-f", str(CONFIG)]
        self.process = subprocess.Popen(
            [*command, "-f", str(servers)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()
        self.names = [f"s{i}" for i in range(1, len(targets) + 1)]
        try:
            self.wait_until(lambda states: all(states.get(n) == "UP" for n in self.names))
        except RuntimeError:
            self.stop()
            raise

    def _collect(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def metrics(self) -> list:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return [
                s for f in text_string_to_metric_families(reply.read().decode()) for s in f.samples
            ]

    def states(self) -> dict[str, str]:
        """Each server's state as the balancer sees it: UP, DOWN, MAINT..."""
        return {
            s.labels["server"]: s.labels["state"]
            for s in self.metrics()
            if s.name == "haproxy_server_status" and s.value == 1
        }

    def responses(self) -> dict[str, float]:
        """HTTP responses each server has sent through the balancer, so far."""
        counts = dict.fromkeys(self.names, 0.0)
        for s in self.metrics():
            if s.name == "haproxy_server_http_responses_total" and s.labels["server"] in counts:
                counts[s.labels["server"]] += s.value
        return counts

    def wait_until(self, condition, timeout: float = START_TIMEOUT) -> dict[str, str]:
        """Poll the servers' states until ``condition(states)`` holds; the states."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                states = self.states()
            except OSError:  # not listening yet
                states = {}
            if condition(states):
                return states
            time.sleep(0.05)
        raise RuntimeError(f"the balancer's servers never got there; its log:\n{self.log}")

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "Balancer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
