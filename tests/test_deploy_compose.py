"""docker-compose.yml: it resolves, and each gradserve service's exact command and environment
becomes healthy when run here (no Docker engine runs on our machines).

A service's command is the image's ENTRYPOINT and CMD from the Dockerfile; its environment
is the image's ENV overlaid with the service's. Only the two port variables are replaced by
free ports, so that the run cannot clash with anything else listening on this machine.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dockerfile import ROOT, runtime_command, runtime_env
from metered import sample, scrape

from bench.ports import free_port
from gradserve.server.cli import build_parser

COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES = COMPOSE["services"]
GRADSERVE_SERVICES = [name for name, service in SERVICES.items() if "build" in service]
VENV_BIN = str(Path(sys.executable).parent)


def seconds(duration: str) -> float:
    """A compose duration such as '15s' or '1m30s', in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0.0, ""
    for char in duration:
        if char in units:
            total, number = total + float(number) * units[char], ""
        else:
            number += char
    return total


PROFILES = ["scale", "observability"]


@pytest.mark.requires_tool("docker-compose")
@pytest.mark.parametrize(
    "profile",
    [[], *(["--profile", name] for name in PROFILES)],
    ids=["default", *PROFILES],
)
def test_compose_file_resolves(profile):
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), *profile, "config"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    # Compose v1 lists every service; v2 only those of the active profiles.
    assert "gradserve" in resolved and set(resolved) <= set(SERVICES)
    profiled = {
        name for name, service in SERVICES.items() if profile[1:] == service.get("profiles")
    }
    assert profiled <= set(resolved)
    if profile == ["--profile", "scale"]:
        replica = resolved["gradserve-replica"]
        assert replica["environment"] == resolved["gradserve"]["environment"]


def test_the_compose_services_set_every_server_flag_and_outlast_its_grace():
    flags = set(vars(build_parser().parse_args(["serve"]))) - {"command", "run"}
    for name in GRADSERVE_SERVICES:
        service = SERVICES[name]
        env = service["environment"]
        server_variables = {key for key in env if key.startswith("GRADSERVE_")}
        assert {"GRADSERVE_" + flag.upper() for flag in flags} == server_variables, name
        drain = float(env["GRADSERVE_DRAIN_DELAY"]) + float(env["GRADSERVE_GRACE"])
        assert seconds(service["stop_grace_period"]) > drain
        assert service["restart"] in ("always", "unless-stopped", "on-failure")
        limits = service["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"]
        assert int(env["GRADSERVE_METRICS_PORT"]) > 0  # metrics are on in compose
        assert env["GRADSERVE_HOST"] == "0.0.0.0"
        assert "gradserve health" in " ".join(service["healthcheck"]["test"])


def test_the_single_instance_publishes_its_grpc_and_metrics_ports():
    env = SERVICES["gradserve"]["environment"]
    published = {port.split(":")[-1] for port in SERVICES["gradserve"]["ports"]}
    assert {env["GRADSERVE_PORT"], env["GRADSERVE_METRICS_PORT"]} == published


def interpolated(environment: dict) -> dict:
    """The values as compose sets them: ``${NAME:-default}`` is NAME's value here, or the
    default (the only form of interpolation the file uses)."""

    def value(text: str) -> str:
        match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", text)
        return os.environ.get(match[1]) or match[2] if match else text

    return {key: value(str(text)) for key, text in environment.items()}


def wait_healthy(healthcheck: dict, env: dict, process: subprocess.Popen) -> None:
    """Run the service's health check as Docker would, until it passes or its budget ends."""
    kind, *command = healthcheck["test"]
    assert kind == "CMD-SHELL"
    # Compose turns $$ into a literal $, which the container's shell then expands.
    script = command[0].replace("$$", "$")
    budget = seconds(healthcheck["start_period"]) + seconds(healthcheck["interval"]) * int(
        healthcheck["retries"]
    )
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        probe = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            assert "SERVING" in probe.stdout
            return
        time.sleep(0.5)
    pytest.fail(f"not healthy within {budget:g} s: {probe.stderr}")


@pytest.mark.parametrize("name", GRADSERVE_SERVICES)
def test_each_compose_service_command_becomes_healthy_here(name):
    service = SERVICES[name]
    entrypoint, cmd = runtime_command()
    command = entrypoint + service.get("command", cmd)
    env = {
        **os.environ,
        **runtime_env(),
        **interpolated(service["environment"]),
        "PATH": VENV_BIN + os.pathsep + os.environ["PATH"],
        "GRADSERVE_PORT": str(free_port()),
        "GRADSERVE_METRICS_PORT": str(free_port()),
    }
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(service["healthcheck"], env, process)
        text = scrape(int(env["GRADSERVE_METRICS_PORT"]))
        assert sample(text, "gradserve_calls_total", method="Check", code="OK") >= 1
        process.send_signal(signal.SIGTERM)  # what `docker stop` sends
        _, err = process.communicate(timeout=seconds(service["stop_grace_period"]))
        assert process.returncode == 0, err
        assert "stopped" in err and "Traceback" not in err
    finally:
        process.kill()
