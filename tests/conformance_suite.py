"""What the clients' tests share: the conformance suite's cases (conformance/cases.json), the
servers they run against, and the examples of the clients' pages under docs/clients/.

Every language's runner reads the same file; the server is `gradserve serve` with the
suite's flags (a bearer token, a small fan-in limit, one process so that plan digests stay
valid, and the conformance plugin's failing op on PYTHONPATH).
"""

import json
import os
from contextlib import contextmanager
from pathlib import Path

import docs_pages
from certs import make_certificates
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


MTLS_TOKEN = "mtls-token"


@contextmanager
def tls_servers(directory: Path):
    """A TLS server and a mutual-TLS server with a bearer token, for the clients' security
    tests; yields the environment variables that name them and the certificates."""
    certs = make_certificates(directory)
    tls = [
        "--workers",
        "1",
        "--tls-cert",
        str(certs.server.cert),
        "--tls-key",
        str(certs.server.key),
    ]
    mtls = [*tls, "--tls-client-ca", str(certs.ca), "--auth-token", MTLS_TOKEN]
    with Served(*tls) as tls_server, Served(*mtls) as mtls_server:
        yield {
            "GRADSERVE_TLS_TARGET": f"localhost:{tls_server.port}",
            "GRADSERVE_MTLS_TARGET": f"localhost:{mtls_server.port}",
            "GRADSERVE_TLS_CA": str(certs.ca),
            "GRADSERVE_CLIENT_CERT": str(certs.client.cert),
            "GRADSERVE_CLIENT_KEY": str(certs.client.key),
            "GRADSERVE_MTLS_TOKEN": MTLS_TOKEN,
        }


def docs_example(page: str, language: str) -> str:
    """The first ```language block of a client's page (docs/clients/go.md, node.md)."""
    return docs_pages.code(page, language)[0]
