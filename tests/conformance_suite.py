"""The conformance suite's cases (conformance/cases.json) and the server they run against.

Every language's runner reads the same file; the server is `gradserve serve` with the
suite's flags (a bearer token, a small fan-in limit, one process so that plan digests stay
valid, and the conformance plugin's failing op on PYTHONPATH).
"""

import json
import os
from contextlib import contextmanager
from pathlib import Path

from servers import Served

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT / "conformance"
CASES_FILE = CONFORMANCE / "cases.json"


def load() -> dict:
    return json.loads(CASES_FILE.read_text())


@contextmanager
def conformance_server():
    """A started conformance server; yields its "host:port" target and token."""
    suite = load()["server"]
    plugin = str(CONFORMANCE / suite["pythonpath"])
    path = os.pathsep.join(filter(None, [plugin, os.environ.get("PYTHONPATH")]))
    with Served(*suite["flags"], env={**os.environ, "PYTHONPATH": path}) as served:
        yield f"127.0.0.1:{served.port}", suite["token"]


def runner_env(target: str, token: str) -> dict[str, str]:
    """What the Go and Node runners read: where the server is and where the cases are."""
    return {
        "GRADSERVE_CONFORMANCE_TARGET": target,
        "GRADSERVE_CONFORMANCE_TOKEN": token,
        "GRADSERVE_CONFORMANCE_CASES": str(CASES_FILE),
    }
