"""`gradserve health` is a quick probe: it imports gRPC and the health stubs, not the server."""

import subprocess
import sys

from servers import GRADSERVE, Served

from gradserve.server import cli


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
