"""`gradserve health` is a quick probe: it imports gRPC and the health stubs, not the server."""

import argparse
import re
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import GRADSERVE, Served

from gradserve import health_probe
from gradserve.server import cli

DOCS = Path(__file__).resolve().parents[1] / "docs" / "server.md"


def imported_modules(*args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """The modules the console script imports for ``args``, from ``python -X importtime``."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", GRADSERVE, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    return modules, result


def test_the_probe_imports_neither_numpy_nor_the_server():
    with Served("--workers", "1") as served:
        modules, result = imported_modules(
            "health", "--target", f"127.0.0.1:{served.port}", "--timeout", "5"
        )
    assert result.returncode == 0, result.stderr
    assert "SERVING" in result.stdout
    assert "grpc" in modules and "gradserve.health_probe" in modules  # the parser works
    assert not {m for m in modules if m == "numpy" or m.startswith("numpy.")}
    assert not {m for m in modules if m.startswith("gradserve.server")}


def test_other_commands_still_reach_the_server_cli():
    modules, result = imported_modules("ops", "check", "--op", "add", "--points", "5")
    assert result.returncode == 0, result.stderr
    assert "gradserve.server.cli" in modules


def test_the_server_cli_still_runs_the_probe(capsys):
    # gradserve.server.cli:main is kept for `python -m gradserve.server.cli`.
    code = cli.main(["health", "--target", "127.0.0.1:1", "--timeout", "1"])
    assert code == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_a_bad_timeout_is_a_usage_error():
    result = subprocess.run(
        [GRADSERVE, "health", "--timeout", "-1"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "argument --timeout: must be above 0 seconds" in result.stderr
    assert "Traceback" not in result.stderr


def recording_stub(checks: list) -> type:
    """A HealthStub class answering SERVING that appends each Check's service and deadline
    to ``checks``."""

    class RecordingStub:
        def __init__(self, channel) -> None:
            pass

        def Check(self, request, timeout):
            checks.append((request.service, timeout))
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    return RecordingStub


def test_the_probe_waits_its_timeout_the_docs_default_unless_given(monkeypatch, capsys):
    """The deadline of the Check call is ``--timeout``; without it, the default that
    docs/server.md states (a probe's own timeout must be set above it)."""
    stated = re.search(r"`--timeout` seconds for the answer, (\d+) by default", DOCS.read_text())
    assert stated, "docs/server.md no longer states the probe's default timeout"
    checks = []
    monkeypatch.setattr(health_pb2_grpc, "HealthStub", recording_stub(checks))
    assert health_probe.main(["--target", "127.0.0.1:1"]) == 0
    assert health_probe.main(["--target", "127.0.0.1:1", "--timeout", "2.5"]) == 0
    assert checks == [("", float(stated[1])), ("", 2.5)]
    assert capsys.readouterr().out == "127.0.0.1:1: SERVING\n" * 2


def test_the_probe_reads_its_connection_options_from_the_environment(monkeypatch, capsys):
    """Only the connection's variables (GRADSERVE_TARGET and the TLS files', which a
    container's probe shares with its server); --service and --timeout are the probe's own."""
    checks = []
    monkeypatch.setattr(health_pb2_grpc, "HealthStub", recording_stub(checks))
    monkeypatch.setenv("GRADSERVE_TARGET", "127.0.0.1:2")
    monkeypatch.setenv("GRADSERVE_SERVICE", "from.the.Environment")
    parser = argparse.ArgumentParser()
    health_probe.add_arguments(parser)
    read = {a.dest for a in parser._actions if getattr(a, "environment_variable", None)}
    assert read == {"target", "tls_ca", "tls_cert", "tls_key"}
    assert health_probe.main([]) == 0
    assert capsys.readouterr().out == "127.0.0.1:2: SERVING\n"
    assert checks == [("", 5.0)]


class CheckOnly(health_pb2_grpc.HealthServicer):
    """A health service as older grpc servers have it: Check without List; the whole server
    reports ``status``."""

    def __init__(self, status) -> None:
        self.status = status

    def Check(self, request, context):
        if request.service:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=self.status)


@pytest.fixture
def check_only_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = CheckOnly(health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_a_server_not_serving_fails_the_probe(check_only_server, capsys):
    assert health_probe.main(["--target", check_only_server]) == 1
    assert capsys.readouterr().out == f"{check_only_server}: NOT_SERVING\n"


def test_an_unknown_service_on_a_server_without_list_is_one_line(check_only_server, capsys):
    assert health_probe.main(["--target", check_only_server, "--service", "x.Nope"]) == 1
    error = capsys.readouterr().err
    assert error == f"{check_only_server}: NOT_FOUND: the server reports on no service 'x.Nope'\n"
