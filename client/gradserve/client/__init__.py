"""The gradserve Python client: micrograd-style Values differentiated by a gradserve server."""

from gradserve.client import (
    nn,
    pending,  # noqa: F401 - installs how pending .data is read
)
from gradserve.client.aio import AsyncClient
from gradserve.client.calls import Chunk, Evaluation
from gradserve.client.channel import DEFAULT_TARGET, connect
from gradserve.client.client import Client
from gradserve.client.default import use
from gradserve.client.draw import draw_dot, render
from gradserve.client.errors import (
    AuthError,
    ClientClosed,
    DeadlineExceeded,
    GradserveError,
    GraphError,
    GraphvizNotFound,
    NoServerConfigured,
    ServerError,
    ServerUnavailable,
)
from gradserve.client.value import Value

__all__ = [
    "DEFAULT_TARGET",
    "AsyncClient",
    "AuthError",
    "Chunk",
    "Client",
    "ClientClosed",
    "DeadlineExceeded",
    "Evaluation",
    "GradserveError",
    "GraphError",
    "GraphvizNotFound",
    "NoServerConfigured",
    "ServerError",
    "ServerUnavailable",
    "Value",
    "connect",
    "draw_dot",
    "nn",
    "render",
    "use",
]
