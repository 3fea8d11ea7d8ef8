"""The Node.js client (client/node) against a live server, through node's own test runner.

Its tests start their own server with this venv's gradserve, and check the notebook neuron's
gradients against closed forms. `.ci/run` installs the packages (npm ci); a developer
without them gets them installed here, from the committed package-lock.json.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NODE_CLIENT = Path(__file__).resolve().parents[1] / "client" / "node"
GRADSERVE = str(Path(sys.executable).parent / "gradserve")


def test_the_node_client_gets_the_notebook_gradients():
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed (CI has Node 20)")
    if not (NODE_CLIENT / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True)
    result = subprocess.run(
        ["node", "--test"],
        cwd=NODE_CLIENT,
        env={**os.environ, "GRADSERVE_BIN": GRADSERVE},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# pass 5" in result.stdout and "# fail 0" in result.stdout
