"""How requests are decoded and responses encoded, around the generated handlers.

- A request that is not valid protobuf is the client's error: INVALID_ARGUMENT. Left alone,
  grpc answers it with INTERNAL ("Exception deserializing request!"), which blames the
  server. Each unary-request handler's deserializer is swapped for one that marks
  undecodable bytes, and the handler then aborts with INVALID_ARGUMENT.
- A response may arrive already encoded, as bytes (results are written straight from NumPy
  arrays, see ``packed.py``); the serializer passes those through.
"""

import grpc

from gradserve.server.engine.errors import GraphError
from gradserve.server.service.status import abort_bad_request

_UNDECODABLE = object()


def _lenient(decode):
    def deserialize(data: bytes):
        try:
            return decode(data)
        except Exception:
            return _UNDECODABLE

    return deserialize


def _passing_bytes(encode):
    def serialize(response) -> bytes:
        return response if isinstance(response, bytes) else encode(response)

    return serialize


def _guarded(behavior):
    def handle(request, context: grpc.ServicerContext):
        if request is _UNDECODABLE:
            reason = "the bytes are not a valid protobuf message of this method's request type"
            abort_bad_request(
                context, grpc.StatusCode.INVALID_ARGUMENT, GraphError(reason, field="request")
            )
        return behavior(request, context)

    return handle


class CodecInterceptor(grpc.ServerInterceptor):
    """Wraps each method's handler once and reuses the wrapped one (4 us a call otherwise)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple] = {}  # method -> (its handler, the wrapped handler)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, _wrap(handler))
        return cached[1]


def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    kind = "unary_stream" if handler.response_streaming else "unary_unary"
    return handler._replace(
        request_deserializer=_lenient(handler.request_deserializer),
        response_serializer=_passing_bytes(handler.response_serializer),
        **{kind: _guarded(getattr(handler, kind))},
    )
