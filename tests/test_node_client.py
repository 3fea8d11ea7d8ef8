"""The Node.js client (client/node) against live servers, through node's own test runner.

Its tests start one server of their own with this venv's gradserve (the notebook's neuron,
checked against closed forms), and use the servers named in the environment
(tests/conformance_suite.py): the conformance server, for the conformance suite, and a TLS
and a mutual-TLS server. `.ci/run` installs the packages (npm ci); a developer without them
gets them installed here, from the committed package-lock.json.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from conformance_suite import load, readme_example
from system_tools import require_tool

NODE_CLIENT = Path(__file__).resolve().parents[1] / "client" / "node"
GRADSERVE = str(Path(sys.executable).parent / "gradserve")


def test_the_node_client_passes_its_tests_and_the_conformance_suite(client_test_env):
    require_tool("node", "npm")
    if not (NODE_CLIENT / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True)
    result = subprocess.run(
        ["node", "--test"],
        cwd=NODE_CLIENT,
        env={**os.environ, **client_test_env, "GRADSERVE_BIN": GRADSERVE},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "# fail 0" in output and "# skipped 0" in output and "# todo 0" in output, output
    cases = len(load()["cases"])
    passed = re.findall(r"^    ok \d+ - (\S+)", result.stdout, re.MULTILINE)
    assert len(passed) == cases, output


def test_the_readme_example_runs_as_written(target):
    require_tool("node", "npm")
    if not (NODE_CLIENT / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True)
    result = subprocess.run(
        ["node", "--input-type=module"],  # the script from stdin, imports relative to cwd
        input=readme_example("js").replace("localhost:50051", target),
        cwd=NODE_CLIENT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "0.7071 -1.5000 1.0000\n"
