"""What tracing costs on W3's call (the notebook's 10-node neuron).

`uv run python bench/tracing_cost.py` starts, side by side, a `gradserve serve --workers 1`
with tracing off (no OTEL_* variables), one exporting every call's spans over OTLP to a
stand-in collector in this process, and the bare gRPC echo of W3; then it alternates calls
to the untraced server with calls to the echo, and to the traced one with the echo, and
prints each server's p50 against the echo's (docs/observability.md, "Traces"). With ``--baseline
PATH/TO/gradserve`` (another checkout's console script, e.g. one without tracing), it also
alternates calls between the untraced server and that one.
"""

import argparse
import os
import sys
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import graphs, servers
from bench.echo import PATH as ECHO_PATH
from bench.measure import percentile_ms
from bench.workloads import _interleaved_latencies, _leaves_request
from gradserve.client import connect

CALLS = 2_000
ECHO_PAYLOAD = bytes(200)


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request, context):
        self.spans += sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


def traced_server(collector_port: int) -> servers.ServerProcess:
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{collector_port}"
    try:
        return servers.gradserve(workers=1)
    finally:
        del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]


def baseline_ratio(baseline: str, stub, request) -> str:
    """This build's untraced p50 against the ``baseline`` build's, calls alternating."""
    server = servers.ServerProcess([baseline, "serve", "--port", "0", "--workers", "1"])
    with server:
        channel, other = connect(server.target)
        with channel:
            ours, theirs = _interleaved_latencies(
                lambda: stub.Evaluate(request), lambda: other.Evaluate(request), CALLS
            )
    ours_p50, theirs_p50 = percentile_ms(ours, 50), percentile_ms(theirs, 50)
    return (
        f"tracing off: p50 {ours_p50:.3f} ms, baseline build p50 {theirs_p50:.3f} ms: "
        f"{ours_p50 / theirs_p50:.2f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="another build's gradserve console script")
    args = parser.parse_args()
    collector = Collector()
    otlp = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, otlp)
    collector_port = otlp.add_insecure_port("127.0.0.1:0")
    otlp.start()
    request = _leaves_request(graphs.mlp(graphs.NEURON_SHAPE, graphs.NEURON_LEAVES))
    try:
        with (
            servers.gradserve(workers=1) as plain,
            traced_server(collector_port) as traced,
            servers.echo() as echo,
        ):
            plain_channel, plain_stub = connect(plain.target)
            traced_channel, traced_stub = connect(traced.target)
            echo_channel, _ = connect(echo.target)
            with plain_channel, traced_channel, echo_channel:
                echo_call = echo_channel.unary_unary(ECHO_PATH)
                off, echo_off = _interleaved_latencies(
                    lambda: plain_stub.Evaluate(request), lambda: echo_call(ECHO_PAYLOAD), CALLS
                )
                on, echo_on = _interleaved_latencies(
                    lambda: traced_stub.Evaluate(request), lambda: echo_call(ECHO_PAYLOAD), CALLS
                )
                against = args.baseline and baseline_ratio(args.baseline, plain_stub, request)
    finally:
        otlp.stop(1)
    for name, ours, echo_times in (("tracing off", off, echo_off), ("tracing on", on, echo_on)):
        p50, echo_p50 = percentile_ms(ours, 50), percentile_ms(echo_times, 50)
        print(f"{name}: p50 {p50:.3f} ms, echo p50 {echo_p50:.3f} ms: {p50 / echo_p50:.2f}x echo")
    print(f"spans received by the stand-in collector: {collector.spans:,}")
    if against:
        print(against)
    return 0


if __name__ == "__main__":
    sys.exit(main())
