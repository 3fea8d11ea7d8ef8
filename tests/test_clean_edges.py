"""Clean edges of the command: Ctrl-C stops every process without a traceback, and every bad
flag value is a one-line usage error (exit 2)."""

import os
import re
import signal
import subprocess
import threading
import time

import pytest
from servers import GRADSERVE
from test_registry import install_fake_plugin

UNTRUSTED_OP = """
    from gradserve.ops import Op

    twice = Op("twice", 1, forward=lambda x: 2 * x, backward=lambda g, y, x: (2 * g,))
"""


def wait_for(lines: list[str], pattern: str, count: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(re.findall(pattern, "".join(lines))) >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"{pattern!r} x{count} not logged:\n{''.join(lines)}")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_every_process_without_a_traceback(tmp_path, workers):
    """SIGINT to the whole process group, as a terminal sends it: the server, its forked
    workers and their spawned isolation workers all get it."""
    install_fake_plugin(tmp_path, "untrusted-plugin", "untrusted", UNTRUSTED_OP, {"twice": "twice"})
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    server = subprocess.Popen(
        [GRADSERVE, "serve", "--port", "0", "--workers", workers, "--isolation-workers", "2"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, like a shell's foreground job
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lines, r"serving on")
        wait_for(lines, r"run in 2 isolated worker", count=int(workers))
        wait_for(lines, r"worker serving" if workers != "1" else r"serving on", int(workers))
        os.killpg(server.pid, signal.SIGINT)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = "still running 30 s after SIGINT"
        reader.join(timeout=10)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    log = "".join(lines)
    assert code == 0, log
    assert "stopped" in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--log-level", "verbose"], "argument --log-level: invalid choice: 'verbose'"),
        (["--port", "-5"], "argument --port: '-5' is not a port (0-65535)"),
        (["--max-message-mb", "-1"], "argument --max-message-mb: must be at least 1, got -1"),
        (["--max-message-mb", "lots"], "argument --max-message-mb: 'lots' is not a whole number"),
        (["--threads", "0"], "argument --threads: must be at least 1, got 0"),
        (["--grace", "-1"], "argument --grace: must be at least 0, got -1"),
        (["--grace", "nan"], "argument --grace: must be at least 0, got nan"),
        (["--plan-cache-mb", "-1"], "argument --plan-cache-mb: must be at least 0, got -1"),
        (["--max-nodes", "0"], "argument --max-nodes: must be at least 1, got 0"),
        (["--max-fan-in", "0"], "argument --max-fan-in: must be at least 1, got 0"),
        (["--max-concurrent-calls", "0"], "argument --max-concurrent-calls: must be at least 1"),
        (["--default-deadline", "0"], "argument --default-deadline: must be above 0, got 0"),
        (["--isolation-workers", "-1"], "argument --isolation-workers: must be at least 0"),
        (["--log-format", "xml"], "argument --log-format: invalid choice: 'xml'"),
    ],
)
def test_bad_flag_values_are_one_line_usage_errors(flags, message):
    result = subprocess.run(
        [GRADSERVE, "serve", *flags], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()  # one line, not a screenful of usage
    assert line.startswith("gradserve serve: error: ") and message in line


def test_a_bad_environment_value_is_a_usage_error_too():
    env = {**os.environ, "GRADSERVE_LOG_LEVEL": "verbose", "GRADSERVE_THREADS": "eight"}
    result = subprocess.run(
        [GRADSERVE, "serve"], capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "argument --threads: GRADSERVE_THREADS='eight' (from the environment): "
        "'eight' is not a whole number"
    ) in result.stderr
