"""Trace context for calls: when OpenTelemetry is installed and a span is active, each
Evaluate and EvaluateStream call carries it in its metadata (``traceparent``, through the
configured propagator, W3C Trace Context by default), so the server's spans join the
caller's trace. Without OpenTelemetry, or outside a span, calls carry nothing extra."""

_otel = None  # (trace, propagate) once imported; False when OpenTelemetry is not installed


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The metadata that carries the active span's context, or () when there is none."""
    global _otel
    if _otel is None:  # imported on the first call: it is slow and usually unused
        try:
            from opentelemetry import propagate, trace

            _otel = (trace, propagate)
        except ImportError:
            _otel = False
    if not _otel:
        return ()
    trace, propagate = _otel
    if not trace.get_current_span().get_span_context().is_valid:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())
