"""Open a channel to a gradserve server and get a GradientService stub."""

import functools
import os

import grpc

from gradserve.client import structure
from gradserve.client.tracing import trace_metadata
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc
from gradserve.v1.service_config import SERVICE_CONFIG_JSON

DEFAULT_TARGET = "localhost:50051"
TARGET_VARIABLE = "GRADSERVE_TARGET"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # matches the server's default


def target_or_default(target: str | None) -> str:
    """``target``; without one, the ``GRADSERVE_TARGET`` environment variable, else
    ``localhost:50051`` (where ``gradserve serve`` listens by default)."""
    return target or os.environ.get(TARGET_VARIABLE, "").strip() or DEFAULT_TARGET


def channel_options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    """Raise gRPC's 4 MiB receive limit to the server's 64 MiB, so that results of a few
    million nodes fit in one Evaluate response, and retry UNAVAILABLE with gRPC's own
    ``retryPolicy`` (``gradserve.v1.service_config``). gRPC retries only requests it still
    holds, 256 KiB by default: it may hold one up to the message limit, which the caller
    holds anyway until the call returns."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.service_config", SERVICE_CONFIG_JSON),
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
    ]


def connect(
    target: str | None = None,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    credentials: grpc.ChannelCredentials | None = None,
) -> tuple[grpc.Channel, pb_grpc.GradientServiceStub]:
    """A channel to ``target`` (see ``target_or_default``; secure when ``credentials`` are
    given) and a stub on it; close the channel when done."""
    options = channel_options(max_message_bytes)
    target = target_or_default(target)
    if credentials is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, credentials, options=options)
    return channel, pb_grpc.GradientServiceStub(channel)


def serialized_calls(channel):
    """Evaluate and EvaluateStream on ``channel`` (sync or asyncio), taking the request
    already serialized. The SDK writes a graph's columns in the wire format (``wire``); a
    message object would only parse them to serialize them again (65 ms for 812k nodes)."""
    service = "/gradserve.v1.GradientService"
    return (
        with_headers(
            channel.unary_unary(
                f"{service}/Evaluate",
                request_serializer=structure.as_bytes,
                response_deserializer=pb.EvaluateResponse.FromString,
            )
        ),
        with_headers(
            channel.unary_stream(
                f"{service}/EvaluateStream",
                request_serializer=structure.as_bytes,
                response_deserializer=pb.GradientChunk.FromString,
            )
        ),
    )


def with_headers(multicallable):
    """``multicallable`` (a sync or asyncio gRPC method) sending, besides the caller's
    metadata, the request's ``gradserve-structure`` header and the active trace context."""

    @functools.wraps(multicallable)
    def call(request, *, metadata=(), **options):
        headers = (*(metadata or ()), *structure.metadata(request), *trace_metadata())
        return multicallable(request, metadata=headers, **options)

    return call
