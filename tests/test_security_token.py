"""Bearer-token auth: every service but health needs the token; reflection can be off."""

import grpc
import pytest
from graphs import neuron
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gradserve.client import connect
from gradserve.client.security import channel_credentials
from gradserve.server.cli import build_parser
from gradserve.server.service import security
from gradserve.server.service.app import running_server
from gradserve.v1 import gradserve_pb2 as pb

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def guarded(registry):
    with running_server(registry, auth_token=TOKEN, enable_reflection=False) as server:
        yield server


def _stub(port, token=None):
    credentials = None if token is None else channel_credentials(token=token, local=True)
    return connect(f"localhost:{port}", credentials=credentials)


def test_the_right_token_gets_through(guarded):
    channel, stub = _stub(guarded.port, TOKEN)
    with channel:
        assert len(stub.Evaluate(pb.EvaluateRequest(graph=neuron()[0].proto())).values) == 10
        assert len(list(stub.EvaluateStream(pb.EvaluateRequest(graph=neuron()[0].proto())))) == 1


def test_the_token_is_read_from_the_authorization_key_among_others(guarded):
    """Other metadata, before and after it in the call and in sort order, is not the token."""
    channel, stub = _stub(guarded.port)
    metadata = (("accept-language", "en"), ("authorization", f"Bearer {TOKEN}"), ("zz", "1"))
    with channel:
        request = pb.EvaluateRequest(graph=neuron()[0].proto())
        assert len(stub.Evaluate(request, metadata=metadata).values) == 10


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", TOKEN[:-1]])
def test_a_missing_or_wrong_token_is_unauthenticated(guarded, token):
    channel, stub = _stub(guarded.port, token)
    with channel:
        for call in (
            lambda: stub.ListOps(pb.ListOpsRequest()),
            lambda: stub.Evaluate(pb.EvaluateRequest(graph=neuron()[0].proto())),
            lambda: list(stub.EvaluateStream(pb.EvaluateRequest(graph=neuron()[0].proto()))),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_token(guarded):
    with grpc.insecure_channel(f"localhost:{guarded.port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_can_be_turned_off(guarded):
    channel, _ = _stub(guarded.port, TOKEN)
    with channel:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as caught:
            list(
                reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([request])
                )
            )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_token_is_compared_in_constant_time(guarded, monkeypatch):
    compared = []

    def spy(a, b):
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    channel, stub = _stub(guarded.port, "guess")
    with channel, pytest.raises(grpc.RpcError):
        stub.ListOps(pb.ListOpsRequest())
    assert compared == [(b"Bearer guess", f"Bearer {TOKEN}".encode())]


def test_the_token_file_wins_holds_a_token_a_line_and_an_empty_one_is_refused(tmp_path):
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert security.read_tokens("inline", str(path)) == ("from-file",)
    assert security.read_tokens("inline", None) == ("inline",)
    assert security.read_tokens(None, None) == ()
    path.write_text("tenant-a\n\n  tenant-b  \n")
    assert security.read_tokens(None, str(path)) == ("tenant-a", "tenant-b")
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        security.read_tokens(None, str(path))
    args = build_parser().parse_args(["serve", "--auth-token-file", str(path), "--no-reflection"])
    assert args.auth_token_file == str(path) and args.no_reflection
