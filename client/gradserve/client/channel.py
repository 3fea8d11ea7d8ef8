"""Open a channel to a gradserve server and get a GradientService stub."""

import grpc

from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # matches the server's default


def connect(
    target: str = DEFAULT_TARGET,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    credentials: grpc.ChannelCredentials | None = None,
) -> tuple[grpc.Channel, pb_grpc.GradientServiceStub]:
    """A channel to ``target`` and a stub on it; close the channel when done.

    The channel is plaintext unless ``credentials`` are given (see
    ``gradserve.client.security.channel_credentials``). The receive limit is raised from
    gRPC's 4 MiB default to the server's 64 MiB, so that results of a few million nodes fit
    in one Evaluate response.
    """
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if credentials is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, credentials, options=options)
    return channel, pb_grpc.GradientServiceStub(channel)
