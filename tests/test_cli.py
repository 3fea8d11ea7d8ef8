"""The `gradserve` command as a user runs it: serve, health, shutdown, start-up errors."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradserve.client import connect
from gradserve.v1 import gradserve_pb2 as pb

GRADSERVE = str(Path(sys.executable).parent / "gradserve")


def start_serving(*flags: str, gradserve: str = GRADSERVE) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [gradserve, "serve", "--port", "0", *flags],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if match := re.search(r"serving on [\d.]+:(\d+)", line):
            return process, int(match.group(1))
        if not line and process.poll() is not None:
            break
    process.kill()
    pytest.fail("the server did not report its port")


def health(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GRADSERVE, "health", "--target", f"127.0.0.1:{port}", "--timeout", "2"],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_reports_serving_then_shuts_down_gracefully(signum):
    process, port = start_serving()
    try:
        probe = health(port)
        assert probe.returncode == 0, probe.stderr
        assert "SERVING" in probe.stdout
        process.send_signal(signum)
        _, err = process.communicate(timeout=20)
        assert process.returncode == 0
        assert "NOT_SERVING" in err and "stopped" in err
        assert "Traceback" not in err
    finally:
        process.kill()


def test_health_fails_when_nothing_listens():
    probe = health(1)  # nothing listens on port 1
    assert probe.returncode != 0
    assert "UNAVAILABLE" in probe.stderr or "DEADLINE_EXCEEDED" in probe.stderr


def test_ops_allow_list_limits_the_loaded_ops():
    process, port = start_serving("--ops", "add,mul")
    try:
        channel, stub = connect(f"127.0.0.1:{port}")
        with channel:
            names = [op.name for op in stub.ListOps(pb.ListOpsRequest()).ops]
        assert names == ["add", "mul"]
    finally:
        process.kill()


def test_an_allow_list_naming_a_missing_op_stops_start_up():
    result = subprocess.run(
        [GRADSERVE, "serve", "--port", "0", "--ops", "add,nosuch"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "no plugin provides: nosuch" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_a_clear_error():
    process, port = start_serving()
    try:
        result = subprocess.run(
            [GRADSERVE, "serve", "--port", str(port)], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        process.kill()
