"""OpenTelemetry traces: a span per call with stage spans, parented on the client's trace."""

import os
import sys
from concurrent import futures

import grpc
import pytest
from graphs import neuron
from hardening import wait_until
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from servers import Served, serving

from gradserve.client import Client, Value
from gradserve.client.tracing import trace_metadata
from gradserve.server.service import tracing
from gradserve.server.service.app import running_server
from gradserve.server.service.calls import call_log
from gradserve.v1 import gradserve_pb2 as pb

CALL = "gradserve.v1.GradientService/"


@pytest.fixture
def exported():
    """Spans the server makes, kept in memory; tracing is off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)


def by_name(spans) -> dict[str, list]:
    named: dict[str, list] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def test_each_call_has_a_span_with_its_stages_and_plan_cache_outcome(registry, exported):
    g, _ = neuron()
    with serving(registry) as stub:
        stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
        stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))  # the same structure: a hit
    spans = by_name(exported.get_finished_spans())
    calls = spans[CALL + "Evaluate"]
    assert len(calls) == 2
    for call in calls:
        assert call.kind is SpanKind.SERVER
        assert call.attributes["gradserve.nodes"] == 10
        assert call.attributes["gradserve.rows"] == 1
        assert call.attributes["gradserve.status"] == "OK"
        assert call.attributes["rpc.method"] == "Evaluate"
        assert call.parent is None  # the client sent no trace context
        stages = [
            s.name
            for s in exported.get_finished_spans()
            if s.parent and s.parent.span_id == call.context.span_id
        ]
        assert stages == ["decoding", "compiling", "evaluating", "encoding"]
    compiles = spans["compiling"]
    assert [c.attributes["gradserve.plan_cache"] for c in compiles] == ["miss", "hit"]


def test_a_failed_call_is_an_error_span(registry, exported):
    with serving(registry) as stub, pytest.raises(grpc.RpcError):
        stub.Evaluate(pb.EvaluateRequest(plan_digest=b"\x00" * 16))
    (call,) = by_name(exported.get_finished_spans())[CALL + "Evaluate"]
    assert call.attributes["gradserve.status"] == "NOT_FOUND"
    assert call.status.status_code is StatusCode.ERROR
    (compiling,) = by_name(exported.get_finished_spans())["compiling"]
    assert compiling.attributes["gradserve.plan_cache"] == "miss"


def test_without_opentelemetry_the_sdk_sends_no_trace_context(monkeypatch):
    """OpenTelemetry is an optional extra: where it cannot be imported, calls carry nothing
    extra, and the import is not tried again on every call."""
    import gradserve.client.tracing as client_tracing

    monkeypatch.setattr(client_tracing, "_otel", None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import opentelemetry fails
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("a span that cannot be carried"):
        assert trace_metadata() == ()
    assert client_tracing._otel is False


def test_the_sdk_carries_the_callers_trace_to_the_server(registry, exported):
    client_spans = InMemorySpanExporter()
    client_provider = TracerProvider()
    client_provider.add_span_processor(SimpleSpanProcessor(client_spans))
    tracer = client_provider.get_tracer("test")
    assert trace_metadata() == ()  # no active span: nothing is sent
    with running_server(registry) as server, Client(f"127.0.0.1:{server.port}") as client:
        x, w = Value(2.0), Value(-3.0)
        with tracer.start_as_current_span("training step") as step:
            (x * w).tanh().backward(client)
            ((key, value),) = trace_metadata()
            assert key == "traceparent" and f"{step.get_span_context().trace_id:032x}" in value
        x.tanh().backward(client)  # outside the span: a request on the Train stream
    spans = by_name(exported.get_finished_spans())
    (traced,) = spans[CALL + "Evaluate"]  # inside a span the SDK calls, with its context
    untraced = spans[CALL + "Train"][0]  # the request's span (the stream has one too)
    assert traced.context.trace_id == step.get_span_context().trace_id
    assert traced.parent.span_id == step.get_span_context().span_id
    assert untraced.parent is None and untraced.context.trace_id != traced.context.trace_id


def test_the_call_log_line_carries_the_trace_id(registry, exported, caplog):
    g, _ = neuron()
    with caplog.at_level("INFO"), serving(registry) as stub:
        stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
    call_log.flush()
    (call,) = by_name(exported.get_finished_spans())[CALL + "Evaluate"]
    lines = [r for r in caplog.records if getattr(r, "method", None) == "Evaluate"]
    assert lines[-1].trace_id == f"{call.context.trace_id:032x}"


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_the_otel_environment_decides_whether_spans_are_exported(environ, wanted):
    assert tracing.wanted(environ) is wanted


def test_off_by_default_at_no_cost(registry):
    assert tracing.start_call("Evaluate", None) is tracing.NO_SPAN
    g, _ = neuron()
    with serving(registry) as stub:
        assert len(stub.Evaluate(pb.EvaluateRequest(graph=g.proto())).values) == 10


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A stand-in OpenTelemetry Collector: keeps the names of the spans exported to it."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.names.extend(span.name for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_the_server_exports_over_otlp_when_the_environment_asks(tmp_path):
    collector = Collector()
    otlp = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, otlp)
    otlp_port = otlp.add_insecure_port("127.0.0.1:0")
    otlp.start()
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds between exports
    }
    try:
        with Served("--workers", "1", env=env) as served:
            with Client(f"127.0.0.1:{served.port}") as client:
                (Value(2.0) * Value(3.0)).backward(client)  # a request on the Train stream
            assert wait_until(lambda: CALL + "Train" in collector.names, 20)
            assert "tracing: spans exported over OTLP" in served.log
    finally:
        otlp.stop(0)
    assert {"decoding", "compiling", "evaluating", "encoding"} <= set(collector.names)


def test_a_stream_of_row_blocks_has_its_evaluation_spans(registry, exported):
    g, _ = neuron()
    graph = g.proto()
    batch = pb.EvaluateRequest(graph=graph, rows=3)
    del batch.graph.leaf_values[:]
    batch.graph.leaf_values.extend(list(graph.leaf_values) * 3)
    with serving(registry) as stub:
        chunks = list(stub.EvaluateStream(batch))
    assert chunks
    spans = exported.get_finished_spans()
    (call,) = by_name(spans)[CALL + "EvaluateStream"]
    assert (call.attributes["gradserve.rows"], call.attributes["gradserve.nodes"]) == (3, 10)
    children = [s.name for s in spans if s.parent and s.parent.span_id == call.context.span_id]
    assert children[:2] == ["decoding", "compiling"] and "evaluating" in children[2:]
    assert all(s.context.trace_id == call.context.trace_id for s in spans)
