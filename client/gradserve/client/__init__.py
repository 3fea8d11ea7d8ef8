"""The gradserve Python client: micrograd-style Values differentiated by a gradserve server."""

# grpc_logging runs first, before any module imports grpc (see its docstring).
from gradserve.client import (
    grpc_logging,  # noqa: F401
    nn,
    optim,
    pending,  # noqa: F401 - installs how pending .data is read (remote.py)
)
from gradserve.client.aio import AsyncClient
from gradserve.client.calls import Chunk, Evaluation
from gradserve.client.channel import DEFAULT_TARGET, connect
from gradserve.client.client import Client
from gradserve.client.default import use
from gradserve.client.errors import (
    AuthError,
    ClientClosed,
    DeadlineExceeded,
    GradserveError,
    GraphError,
    GraphvizNotFound,
    NoServerConfigured,
    ResourceExhausted,
    ServerError,
    ServerUnavailable,
)
from gradserve.client.value import Value
from gradserve.client.version import __version__


def __getattr__(name: str):
    """``draw_dot`` and ``render``, imported when first used: they need the optional
    graphviz package (``pip install 'gradserve-client[draw]'``), the rest of the SDK not."""
    if name in ("draw_dot", "render"):
        from gradserve.client import draw

        return getattr(draw, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "ResourceExhausted",
    "ServerError",
    "ServerUnavailable",
    "Value",
    "__version__",
    "connect",
    "draw_dot",
    "nn",
    "optim",
    "render",
    "use",
]
