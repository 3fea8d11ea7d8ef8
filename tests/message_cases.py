"""The calls that cannot get through, for the tests that compare every client's one-line
message with the Python SDK's (tests/test_client_messages.py, tests/test_rust_client.py)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from certs import make_certificates

from bench.ports import free_localhost_address
from gradserve.client import AuthError, Client, GradserveError, Value
from gradserve.client.security import channel_credentials
from gradserve.server.service.app import running_server
from gradserve.server.service.security import server_credentials

CHAIN = 200_000  # tanh nodes: far more than a millisecond of work for any client


@contextmanager
def message_cases(registry, directory: Path) -> Iterator[list[dict]]:
    """Each case as {name, target, tls, ca, cert, key, timeout_s, chain}: nothing listening,
    TLS on one side only, an untrusted server, a mutual-TLS server without or with a foreign
    client certificate, and a chain longer than its timeout. The servers run meanwhile."""
    certs = make_certificates(directory)
    tls = server_credentials(str(certs.server.cert), str(certs.server.key))
    mtls = server_credentials(str(certs.server.cert), str(certs.server.key), str(certs.ca))
    with (
        running_server(registry, address=free_localhost_address()) as plain,
        running_server(registry, credentials=tls, address=free_localhost_address()) as secure,
        running_server(registry, credentials=mtls, address=free_localhost_address()) as mutual,
    ):
        with running_server(registry, address=free_localhost_address()) as gone:
            nothing = f"localhost:{gone.port}"
        ca, stranger = str(certs.ca), certs.stranger

        def case(name, target, tls=False, ca="", cert="", key="", timeout_s=30.0, chain=0):
            return dict(locals())

        yield [
            case("nothing listens", nothing),
            case("plaintext client, TLS server", f"localhost:{secure.port}"),
            case("TLS client, plaintext server", f"localhost:{plain.port}", True, ca),
            case("server not trusted", f"localhost:{secure.port}", True),
            case("no client certificate", f"localhost:{mutual.port}", True, ca),
            case(
                "foreign client certificate",
                f"localhost:{mutual.port}",
                True,
                ca,
                str(stranger.cert),
                str(stranger.key),
            ),
            case("timeout", f"localhost:{plain.port}", timeout_s=0.001, chain=CHAIN),
        ]


def python_message(case: dict) -> tuple[str, bool]:
    """The Python SDK's message for the case, and whether it is an AuthError."""
    credentials = None
    if case["tls"]:
        credentials = channel_credentials(
            ca_file=case["ca"] or None, cert_file=case["cert"] or None, key_file=case["key"] or None
        )
    with Client(case["target"], credentials=credentials, timeout=case["timeout_s"]) as client:
        try:
            if case["chain"]:
                y = Value(0.5)
                for _ in range(case["chain"]):
                    y = y.tanh()
                y.backward(client)
            else:
                client.ops()
        except GradserveError as error:
            return str(error), isinstance(error, AuthError)
    pytest.fail(f"{case['name']}: the call succeeded")
