"""A bare gRPC unary echo server for the latency baseline: `python -m bench.echo`.

It has no protobuf messages: the handler returns the request's bytes as they came, so a
round trip costs only gRPC itself. It logs ``serving on HOST:PORT`` like gradserve.
"""

import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE, METHOD = "bench.Echo", "Echo"
PATH = f"/{SERVICE}/{METHOD}"


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"serving on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    stopping.wait()
    server.stop(0).wait()


if __name__ == "__main__":
    main()
