"""The OpenTelemetry side of ``tracing``, imported only once tracing is on (it imports
nothing of ``tracing``: the names both use are in ``span_names``)."""

from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gradserve.server.service.span_names import NODES, ROWS, SERVICE, STATUS

_PROPAGATOR = TraceContextTextMapPropagator()


def tracer(provider) -> trace.Tracer:
    return provider.get_tracer("gradserve.server")


class CallSpan:
    def __init__(self, tracer: trace.Tracer, name: str, method: str, context) -> None:
        carrier = {key: value for key, value in context.invocation_metadata() or ()}
        parent = _PROPAGATOR.extract(carrier)
        self._tracer = tracer
        self._span = tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method},
        )
        self._context = trace.set_span_in_context(self._span)
        self.trace_id = format(self._span.get_span_context().trace_id, "032x")

    @contextmanager
    def step(self, name: str):
        """A child span for one stage of the call, ended when the block ends. It is not
        made the current span: a stream's stage spans yields, and a context attached in
        one generator step cannot be detached in another."""
        span = self._tracer.start_span(name, context=self._context)
        try:
            yield span
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    def finish(self, status: str, *, nodes: int = 0, rows: int | None = None) -> None:
        self._span.set_attribute(STATUS, status)
        self._span.set_attribute(NODES, nodes)
        if rows is not None:
            self._span.set_attribute(ROWS, rows)
        if status != "OK":
            self._span.set_status(Status(StatusCode.ERROR, status))
        self._span.end()
