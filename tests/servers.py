"""Servers for tests: in-process on port 0, or `gradserve serve` as a user runs it."""

import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from gradserve.server.service.app import running_server
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


@contextmanager
def serving(registry, **options):
    """A stub on a fresh server that loads only ``registry``."""
    with (
        running_server(registry, **options) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield pb_grpc.GradientServiceStub(channel)


GRADSERVE = str(Path(sys.executable).parent / "gradserve")


class Served:
    """A `gradserve serve` subprocess whose log lines are collected as they come."""

    def __init__(self, *flags: str, gradserve: str = GRADSERVE, env=None) -> None:
        self.process = subprocess.Popen(
            [gradserve, "serve", "--port", "0", *flags],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()
        match = self.wait_for(r"serving on [\d.]+:(\d+)")
        self.port = int(match.group(1))

    def _collect(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.log):
                return match
            if self.process.poll() is not None and not self.lines:
                break
            time.sleep(0.05)
        self.process.kill()
        code = self.process.wait()
        self._collector.join(timeout=5)  # the lines it had not read yet say why
        pytest.fail(
            f"no log line matched {pattern!r} within {timeout:g} s (exit code {code}; a "
            f"negative one is the kill that ended the wait):\n{self.log}"
        )

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=30)
        time.sleep(0.1)  # let the collector read the last lines
        return code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        """Stop it as an operator would (SIGTERM, so workers stop too); kill it if stuck."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def health(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GRADSERVE, "health", "--target", f"127.0.0.1:{port}", "--timeout", "2"],
        capture_output=True,
        text=True,
    )
