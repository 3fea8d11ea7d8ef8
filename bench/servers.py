"""Server subprocesses for the benchmark: `gradserve serve` and the bare gRPC echo.

Like tests/servers.py's Served, but without pytest: a server that does not come up raises
RuntimeError with its log.
"""

import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

GRADSERVE = str(Path(sys.executable).parent / "gradserve")
START_TIMEOUT = 60.0


class ServerProcess:
    """A server subprocess that logs ``serving on HOST:PORT`` to stderr; lines are kept."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()
        try:
            self.port = int(self.wait_for(r"serving on [\d.]+:(\d+)").group(1))
        except RuntimeError:
            self.stop()
            raise
        self.target = f"127.0.0.1:{self.port}"

    def _collect(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, after: int = 0, timeout: float = START_TIMEOUT) -> re.Match:
        """The first match of ``pattern`` in the log lines from line ``after`` on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if match := re.search(pattern, line):
                    return match
            if self.process.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"no log line matched {pattern!r}; the log:\n{''.join(self.lines)}")

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def memory_kib(self, field: str) -> int:
        """A field of /proc/PID/status such as VmRSS (resident now) or VmHWM (peak), in KiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))

    def cpu_seconds(self) -> float:
        """The CPU time (user and system, all threads) the server has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mib(self, field: str = "VmRSS") -> float:
        """Resident memory now (VmRSS) or at its peak (VmHWM), in MiB; NaN once it exited."""
        if self.process.poll() is not None:
            return math.nan
        return self.memory_kib(field) / 1024

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the server has not exited within 30 s."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def one_worker(options: list[str]) -> ServerProcess:
    """`gradserve serve --workers 1` on a free port, with its defaults but ``options``."""
    return ServerProcess([GRADSERVE, "serve", "--port", "0", "--workers", "1", *options])


def gradserve(workers: int) -> ServerProcess:
    """`gradserve serve --workers N` on a free port, once every worker is serving.

    With several workers the parent logs ``serving on`` as soon as it has forked them, before
    they bind the port; each worker then logs ``worker serving``.
    """
    server = ServerProcess([GRADSERVE, "serve", "--port", "0", "--workers", str(workers)])
    deadline = time.monotonic() + START_TIMEOUT
    while workers > 1 and server.log.count("worker serving") < workers:
        if time.monotonic() > deadline or server.process.poll() is not None:
            server.stop()
            raise RuntimeError(f"not all {workers} workers started; the log:\n{server.log}")
        time.sleep(0.01)
    return server


def gradserve_alone(*flags: str) -> ServerProcess:
    """`gradserve serve --workers 1 FLAGS` on a free port: one server process, so that its
    resident memory is the server's (the soak and bench/abuser_memory.py read it)."""
    return ServerProcess([GRADSERVE, "serve", "--port", "0", "--workers", "1", *flags])


def echo(aio: bool = False) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "bench.echo", *(["--aio"] if aio else [])])
