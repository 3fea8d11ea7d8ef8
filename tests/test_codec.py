"""The codec interceptor wraps each method's handler once, and again only if it changes."""

from types import SimpleNamespace

import grpc

from gradserve.server.service.codec import CodecInterceptor
from gradserve.v1 import gradserve_pb2 as pb

METHOD = "/gradserve.v1.GradientService/Evaluate"


def _handler():
    return grpc.unary_unary_rpc_method_handler(
        lambda request, context: request,
        request_deserializer=pb.EvaluateRequest.FromString,
        response_serializer=pb.EvaluateResponse.SerializeToString,
    )


def test_a_methods_handler_is_wrapped_once_and_rewrapped_when_it_changes():
    interceptor = CodecInterceptor()
    details = SimpleNamespace(method=METHOD, invocation_metadata=())
    first, second = _handler(), _handler()
    wrapped = interceptor.intercept_service(lambda _: first, details)
    assert wrapped is not first
    assert interceptor.intercept_service(lambda _: first, details) is wrapped
    rewrapped = interceptor.intercept_service(lambda _: second, details)
    assert rewrapped is not wrapped


def test_the_wrapped_handler_decodes_leniently_and_passes_bytes_through():
    wrapped = CodecInterceptor().intercept_service(
        lambda _: _handler(), SimpleNamespace(method=METHOD, invocation_metadata=())
    )
    request = pb.EvaluateRequest(rows=3)
    assert wrapped.request_deserializer(request.SerializeToString()) == request
    assert wrapped.response_serializer(b"\x28\x01") == b"\x28\x01"
    assert wrapped.response_serializer(pb.EvaluateResponse(rows=1)) == b"\x28\x01"
