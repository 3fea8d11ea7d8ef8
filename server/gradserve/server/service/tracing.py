"""OpenTelemetry traces of gRPC calls: a span per call, child spans for its stages.

Off unless the standard OpenTelemetry environment asks for it: ``OTEL_TRACES_EXPORTER``
naming ``otlp``, or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set while ``OTEL_TRACES_EXPORTER`` is not ``none``;
``OTEL_SDK_DISABLED=true`` wins. The exporter then reads the rest of its settings
(endpoint, headers, TLS, protocol details) from the same variables, and the resource its
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``. When off, OpenTelemetry is not even
imported and every call gets ``NO_SPAN``, whose methods do nothing.

The servicer's use (see ``service/servicer.py``)::

    span = tracing.start_call("Evaluate", context)   # parent from the traceparent header
    with span.step("decoding"): ...
    with span.step("compiling") as step:
        step.set_attribute(tracing.PLAN_CACHE, "hit")
    span.finish("OK", nodes=10, rows=1)
    span.trace_id                                      # for the log line, or None

A call's span is a SERVER span named ``gradserve.v1.GradientService/<method>``; its parent is
extracted from the call's invocation metadata with the W3C Trace Context propagator, so a
client that sends ``traceparent`` (the Python SDK does, when OpenTelemetry is installed and
a span is active) sees the server's work inside its own trace.
"""

import os

from gradserve.server.service.span_names import PLAN_CACHE, SERVICE

__all__ = ["NO_SPAN", "PLAN_CACHE", "configure", "start_call", "use", "wanted"]

_tracer = None  # an opentelemetry Tracer while tracing is on


class _NoStep:
    """A stage span that does nothing (tracing is off)."""

    def __enter__(self) -> "_NoStep":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def set_attribute(self, key: str, value) -> None:
        return None


class _NoSpan:
    """A call span that does nothing (tracing is off)."""

    trace_id = None
    _step = _NoStep()

    def step(self, name: str) -> _NoStep:
        return self._step

    def finish(self, status: str, *, nodes: int = 0, rows: int | None = None) -> None:
        return None


NO_SPAN = _NoSpan()


def wanted(environ=os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported over OTLP."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {name.strip() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")}
    if "otlp" in exporters:
        return True
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return bool(endpoint) and "none" not in exporters


def configure() -> bool:
    """Turn tracing on with a batching OTLP/gRPC exporter if ``wanted()``; call it in each
    server process (after any fork: the exporter runs a thread). Returns whether it is on."""
    if not wanted():
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "gradserve")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use(provider)
    return True


def use(provider) -> None:
    """Trace calls into ``provider`` (an opentelemetry TracerProvider), or stop with None.
    Tests pass a provider with an in-memory exporter."""
    global _tracer
    if provider is None:
        _tracer = None
        return
    from gradserve.server.service import otel_spans  # imports OpenTelemetry

    _tracer = otel_spans.tracer(provider)


def start_call(method: str, context):
    """The span of a call to ``method`` (``NO_SPAN`` when tracing is off). ``context`` is
    the call's grpc ServicerContext, whose metadata may carry the parent (traceparent)."""
    if _tracer is None:
        return NO_SPAN
    from gradserve.server.service import otel_spans

    return otel_spans.CallSpan(_tracer, f"{SERVICE}/{method}", method, context)
