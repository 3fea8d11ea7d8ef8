"""The `gradserve` command as a user runs it: serve, health, workers, shutdown, errors."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from graphs import neuron
from hardening import wait_until
from servers import GRADSERVE, Served, health

from gradserve.client import connect
from gradserve.server import cli
from gradserve.server.runtime.workers import RESTART_DELAY
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_reports_serving_then_shuts_down_gracefully(signum):
    with Served("--workers", "1") as served:
        probe = health(served.port)
        assert probe.returncode == 0, probe.stderr
        assert "SERVING" in probe.stdout
        assert served.stop(signum) == 0
        assert "NOT_SERVING" in served.log and "stopped" in served.log
        assert "Traceback" not in served.log


def test_health_fails_when_nothing_listens():
    probe = health(1)  # nothing listens on port 1
    assert probe.returncode != 0
    assert "UNAVAILABLE" in probe.stderr or "DEADLINE_EXCEEDED" in probe.stderr


def test_ops_allow_list_limits_the_loaded_ops():
    with Served("--ops", "add,mul", "--workers", "1") as served:
        channel, stub = connect(f"127.0.0.1:{served.port}")
        with channel:
            names = [op.name for op in stub.ListOps(pb.ListOpsRequest()).ops]
        assert names == ["add", "mul"]


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


@pytest.mark.parametrize(("serving", "workers"), [("1", "1"), ("1", "2"), ("2", "1"), ("1", "4")])
def test_a_port_in_use_is_one_line_naming_the_address(serving, workers):
    """The same line and exit status 1 whatever --workers (2 stays for usage errors), and
    none of gRPC's C-core lines."""
    with Served("--workers", serving) as served:
        result = subprocess.run(
            [GRADSERVE, "serve", "--port", str(served.port), "--workers", workers],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.endswith(f"cannot listen on 127.0.0.1:{served.port}: address already in use")


def worker_pids(log: str) -> set[int]:
    return {int(pid) for pid in re.findall(r" (\d+) INFO \S+: worker serving", log)}


def test_workers_share_the_port_and_a_dead_worker_is_replaced():
    with Served("--workers", "2") as served:
        served.wait_for(r"(?s:worker serving.*){2}")
        first = worker_pids(served.log)
        assert len(first) == 2 and os.getpid() not in first
        g, ids = neuron()
        for _ in range(16):  # new connections: the kernel spreads them over the workers
            # a pool of its own, or grpc may reuse the last channel's connection (and worker)
            local = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(f"127.0.0.1:{served.port}", options=local) as channel:
                stub = pb_grpc.GradientServiceStub(channel)
                reply = stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
            assert reply.grads[ids["x1"]] == pytest.approx(-1.5, rel=1e-12)

        def handled() -> set[int]:
            return {int(pid) for pid in re.findall(r" (\d+) INFO \S+: Evaluate ", served.log)}

        # Each worker writes its call lines from a background thread: wait for both.
        assert wait_until(lambda: handled() == first, 10), served.log

        victim = first.pop()
        os.kill(victim, signal.SIGKILL)
        served.wait_for(rf"worker {victim} exited .*restarting it")
        served.wait_for(r"(?s:worker serving.*){3}")
        assert health(served.port).returncode == 0
        assert served.stop() == 0
        assert "stopped" in served.log and "Traceback" not in served.log


def test_workers_stop_when_their_parent_is_killed():
    with Served("--workers", "2") as served:
        served.wait_for(r"(?s:worker serving.*){2}")
        workers = worker_pids(served.log)
        served.process.kill()
        served.process.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(pid) for pid in workers):
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, not yet reaped by init, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "70000"], "argument --port: '70000' is not a port (0-65535)"),
        (["--metrics-port", "-1"], "argument --metrics-port: '-1' is not a port"),
        (["--workers", "0"], "argument --workers: must be at least 1, got 0"),
    ],
)
def test_bad_flags_are_usage_errors(flags, message):
    result = subprocess.run(
        [GRADSERVE, "serve", *flags], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_stop_signal_while_the_main_thread_holds_the_events_lock_does_not_deadlock():
    """The handler runs in the main thread, here while it holds the stop event's lock (as
    inside ``wait`` or an earlier handler's ``set``): it must not take that lock itself."""
    code = (
        "import signal\n"
        "from gradserve.server.runtime.workers import stop_signal_event\n"
        "stopping = stop_signal_event()\n"
        "with stopping._cond:\n"
        "    signal.raise_signal(signal.SIGTERM)\n"
        "print(stopping.wait(10))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "True", result.stderr


def test_two_sigterms_close_together_stop_the_workers_and_their_parent():
    with Served("--workers", "2") as served:
        served.wait_for("serving on .* with 2 worker processes")
        served.process.send_signal(signal.SIGTERM)
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=60) == 0


SLOW_WORKER = """
import logging, sys, time
from pathlib import Path
from gradserve.server.runtime.workers import serve_workers

logging.basicConfig(level=logging.INFO, format="%(message)s")
gate = Path(sys.argv[1])

def run_worker(index, port, ready):
    while not gate.exists():  # not ready until the test says so
        time.sleep(0.05)
    ready()
    time.sleep(3600)  # until the parent's SIGTERM
    return 0

sys.exit(serve_workers(run_worker, host="127.0.0.1", port=0, workers=1, describe="slow"))
"""


def test_the_server_is_announced_only_once_its_workers_are_ready(tmp_path):
    """A worker that takes longer than the restart delay to listen: the parent waits for it
    (announcing nothing meanwhile) rather than counting a wait that timed out as a start."""
    gate, log = tmp_path / "ready", tmp_path / "log"
    with log.open("w") as out:
        parent = subprocess.Popen(
            [sys.executable, "-c", SLOW_WORKER, str(gate)], stderr=out, stdout=out
        )
    try:
        time.sleep(3 * RESTART_DELAY)  # three of the parent's waits for a ready worker
        assert "serving on" not in log.read_text()
        gate.touch()
        assert wait_until(lambda: "serving on" in log.read_text(), 30), log.read_text()
    finally:
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 0, log.read_text()


def test_every_mib_option_reaches_the_server_in_bytes(monkeypatch):
    """--max-memory-mb, --max-message-mb, --plan-cache-mb and --max-arriving-mb are MiB:
    start_server gets each times 2**20 (run in this process up to start_server)."""
    given = {}

    def recording(registry, **options):
        given.update(options)
        raise RuntimeError("recorded, not started")

    monkeypatch.setattr(cli, "start_server", recording)
    monkeypatch.setattr(cli.malloc, "configure", lambda: None)  # not this process's malloc
    monkeypatch.setattr(cli, "stop_signal_event", threading.Event)  # nor its signals
    sizes = {"max-memory-mb": 1000, "max-message-mb": 7, "plan-cache-mb": 100}
    sizes["max-arriving-mb"] = 200
    flags = [part for name, mib in sizes.items() for part in (f"--{name}", str(mib))]
    assert cli.main(["serve", "--port", "0", "--workers", "1", *flags]) == 1
    assert given["max_memory_bytes"] == 1000 * 2**20
    assert given["max_message_bytes"] == 7 * 2**20
    assert given["plan_cache_bytes"] == 100 * 2**20
    assert given["max_arriving_bytes"] == 200 * 2**20


INTERRUPTED = """
import sys
from gradserve import command
from gradserve.server import cli

def interrupted():
    print("some output")
    raise {}

cli.main = interrupted
sys.exit(command.main())
"""


@pytest.mark.parametrize(
    "raised, status", [("KeyboardInterrupt()", 130), ("BrokenPipeError()", 141)]
)
def test_an_interrupt_or_a_closed_pipe_exits_with_the_shell_s_status_quietly(raised, status):
    """Ctrl-C before the server's handlers: 128 + SIGINT; output cut short by its reader
    (``gradserve ops list | head``): 128 + SIGPIPE. No traceback either way."""
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED.format(raised)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == status
    assert "Traceback" not in result.stderr
