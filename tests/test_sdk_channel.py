"""Client options that issue 6's security work builds on: metadata and channel credentials."""

import asyncio
from concurrent import futures

import grpc
import pytest

from gradserve.client import AsyncClient, Client, ServerUnavailable
from gradserve.client.channel import MAX_MESSAGE_BYTES, channel_options, with_headers
from gradserve.client.structure import HEADER, structured
from gradserve.server.service.app import DEFAULT_MAX_MESSAGE_BYTES
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


class _EchoMetadata(pb_grpc.GradientServiceServicer):
    """ListOps answers with one op per metadata entry the call carried, named key=value."""

    def ListOps(self, request, context):
        return pb.ListOpsResponse(
            ops=[pb.OpInfo(name=f"{k}={v}") for k, v in context.invocation_metadata()]
        )


@pytest.fixture(scope="module")
def echo_target():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GradientServiceServicer_to_server(_EchoMetadata(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_metadata_goes_with_every_call(echo_target):
    with Client(echo_target, metadata=[("x-team", "ml")]) as client:
        assert "x-team=ml" in {op.name for op in client.ops()}


def test_async_metadata_goes_with_every_call(echo_target):
    async def main():
        async with AsyncClient(echo_target, metadata=[("x-team", "ml")]) as client:
            return await client.ops()

    assert "x-team=ml" in {op.name for op in asyncio.run(main())}


def test_credentials_make_the_channel_secure(target):
    # The session server speaks plaintext: a TLS channel cannot talk to it.
    secure = Client(target, credentials=grpc.ssl_channel_credentials(), timeout=5)
    with secure, pytest.raises(ServerUnavailable):
        secure.ops()
    with Client(target, timeout=5) as client:
        assert client.ops()


def test_a_call_adds_its_headers_to_the_callers_metadata_and_takes_options_by_name():
    """``with_headers``: the caller's metadata first, then the request's structure header;
    every other option reaches gRPC as given. grpc's own multicallables take ``timeout``
    second by position: here an option given by position is refused, never read as metadata."""
    seen = []

    def multicallable(request, **options):
        seen.append((request, options))
        return "reply"

    call = with_headers(multicallable)
    request = structured(b"\x08\x01", bytes.fromhex("abcd"))
    assert call(request, metadata=(("who", "me"),), timeout=3.0) == "reply"
    assert call(b"plain") == "reply"  # no structure known: no header
    assert seen == [
        (request, {"metadata": (("who", "me"), (HEADER, "abcd")), "timeout": 3.0}),
        (b"plain", {"metadata": ()}),
    ]
    with pytest.raises(TypeError):
        call(request, (("who", "me"),))


def test_the_client_s_message_limit_is_the_server_s_default():
    """A reply the server may send by default, the client may receive: the SDK raises
    gRPC's 4 MiB receive limit to the server's, both ways, and lets gRPC hold a request
    that large for its retries."""
    assert MAX_MESSAGE_BYTES == DEFAULT_MAX_MESSAGE_BYTES
    options = dict(channel_options(MAX_MESSAGE_BYTES))
    for name in ("max_receive_message_length", "max_send_message_length"):
        assert options["grpc." + name] == DEFAULT_MAX_MESSAGE_BYTES
    assert options["grpc.per_rpc_retry_buffer_size"] == DEFAULT_MAX_MESSAGE_BYTES
    assert options["grpc.enable_retries"] == 1
