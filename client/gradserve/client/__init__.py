"""The gradserve Python client: micrograd-style Values differentiated by a gradserve server."""

from gradserve.client.aio import AsyncClient
from gradserve.client.calls import Chunk, Evaluation
from gradserve.client.channel import DEFAULT_TARGET, connect
from gradserve.client.client import Client
from gradserve.client.draw import draw_dot, render
from gradserve.client.errors import (
    DeadlineExceeded,
    GradserveError,
    GraphError,
    GraphvizNotFound,
    ServerError,
    ServerUnavailable,
)
from gradserve.client.value import Value

__all__ = [
    "DEFAULT_TARGET",
    "AsyncClient",
    "Chunk",
    "Client",
    "DeadlineExceeded",
    "Evaluation",
    "GradserveError",
    "GraphError",
    "GraphvizNotFound",
    "ServerError",
    "ServerUnavailable",
    "Value",
    "connect",
    "draw_dot",
    "render",
]
