"""TLS and mutual TLS, through the client's credential helper and the CLI."""

import subprocess

import grpc
import pytest
from certs import make_certificates
from graphs import neuron
from servers import GRADSERVE, Served

from bench.ports import free_localhost_address
from gradserve.client import connect
from gradserve.client.security import channel_credentials
from gradserve.server.service.app import running_server
from gradserve.server.service.security import server_credentials
from gradserve.v1 import gradserve_pb2 as pb


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _evaluate(port: int, credentials=None) -> pb.EvaluateResponse:
    channel, stub = connect(f"localhost:{port}", credentials=credentials)
    with channel:
        return stub.Evaluate(pb.EvaluateRequest(graph=neuron()[0].proto()), timeout=10)


def _refused(port: int, credentials=None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        _evaluate(port, credentials)
    return caught.value.code()


def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(registry, certs):
    tls = server_credentials(str(certs.server.cert), str(certs.server.key))
    with running_server(registry, credentials=tls, address=free_localhost_address()) as server:
        assert len(_evaluate(server.port, channel_credentials(ca_file=certs.ca)).values) == 10
        assert _refused(server.port) == grpc.StatusCode.UNAVAILABLE
        # The system's roots do not vouch for a self-made CA.
        assert _refused(server.port, channel_credentials()) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(registry, certs):
    mtls = server_credentials(str(certs.server.cert), str(certs.server.key), str(certs.ca))
    with running_server(registry, credentials=mtls, address=free_localhost_address()) as server:
        good = channel_credentials(
            ca_file=certs.ca, cert_file=certs.client.cert, key_file=certs.client.key
        )
        assert len(_evaluate(server.port, good).values) == 10
        anonymous = channel_credentials(ca_file=certs.ca)
        assert _refused(server.port, anonymous) == grpc.StatusCode.UNAVAILABLE
        stranger = channel_credentials(
            ca_file=certs.ca, cert_file=certs.stranger.cert, key_file=certs.stranger.key
        )
        assert _refused(server.port, stranger) == grpc.StatusCode.UNAVAILABLE


def test_the_cli_serves_tls_and_its_health_probe_speaks_it(certs):
    tls = ("--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key))
    with Served(*tls, "--workers", "2") as served:

        def probe(*flags):
            target = f"localhost:{served.port}"
            return subprocess.run(
                [GRADSERVE, "health", "--target", target, "--timeout", "3", *flags],
                capture_output=True,
                text=True,
            )

        assert probe("--tls-ca", str(certs.ca)).returncode == 0
        assert probe().returncode == 1  # plaintext probe of a TLS server


def test_the_cli_refuses_half_a_tls_configuration(certs):
    result = subprocess.run(
        [GRADSERVE, "serve", "--port", "0", "--tls-cert", str(certs.server.cert)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--tls-key" in result.stderr and "Traceback" not in result.stderr
