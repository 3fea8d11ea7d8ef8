"""A bare gRPC server for the baselines: `python -m bench.echo`.

It has no protobuf messages, so a round trip costs only gRPC itself. ``Echo`` returns the
request's bytes as they came. ``Sized`` returns as many zero bytes as the request's first 8
bytes say, little-endian (``sized_request``): W3 uses it for a call of the neuron's shape
(its request's length in, its reply's length out), W4 for what moving a batch's request and
response costs, with no evaluation. With ``--aio`` it is a ``grpc.aio`` server whose Echo
and Sized are shaped as gradserve's methods are (request-streaming on the server side, one
``read`` and one ``write``): the floor under gradserve's own serving layer; its Stream
answers every message of one long-lived bidirectional stream as Sized does, as Train
serves them. It allows messages as large as gradserve's and logs ``serving on HOST:PORT``
like gradserve.
"""

import asyncio
import signal
import sys
import threading
from concurrent import futures

import grpc

from gradserve.client.channel import MAX_MESSAGE_BYTES, channel_options

SERVICE = "bench.Echo"
PATH = f"/{SERVICE}/Echo"
SIZED_PATH = f"/{SERVICE}/Sized"
STREAM_PATH = f"/{SERVICE}/Stream"  # --aio only


def sized_request(request_bytes: int, reply_bytes: int) -> bytes:
    """A ``Sized`` request of ``request_bytes`` bytes asking for ``reply_bytes`` back."""
    return reply_bytes.to_bytes(8, "little") + bytes(max(0, request_bytes - 8))


def _sized(request: bytes, context) -> bytes:
    return bytes(int.from_bytes(request[:8], "little"))


async def _echo_stream(_requests, context) -> None:
    await context.write(await context.read())


async def _sized_stream(_requests, context) -> None:
    await context.write(_sized(await context.read(), context))


async def _sized_each(_requests, context) -> None:
    """Every message answered as Sized answers it, until the client half-closes: the floor
    under a message on gradserve's Train stream."""
    while (message := await context.read()) is not grpc.aio.EOF:
        await context.write(_sized(message, context))


def _serve_aio() -> None:
    async def serve() -> None:
        server = grpc.aio.server(options=channel_options(MAX_MESSAGE_BYTES))
        handlers = {
            "Echo": grpc.stream_stream_rpc_method_handler(_echo_stream),
            "Sized": grpc.stream_stream_rpc_method_handler(_sized_stream),
            "Stream": grpc.stream_stream_rpc_method_handler(_sized_each),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"serving on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        await stopping.wait()
        await server.stop(0)

    asyncio.run(serve())


def main() -> None:
    if "--aio" in sys.argv[1:]:
        _serve_aio()
        return
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), options=channel_options(MAX_MESSAGE_BYTES)
    )
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
        "Sized": grpc.unary_unary_rpc_method_handler(_sized),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"serving on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    stopping.wait()
    server.stop(0).wait()


if __name__ == "__main__":
    main()
