"""Typed exceptions for what can go wrong in a call, and the one place gRPC errors become them.

A caller catches ``GradserveError`` for everything, or a subclass for one cause; the gRPC
error is not chained, so a user sees one clear message rather than a gRPC traceback.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import grpc.aio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

_NODE_REASON = re.compile(r"node (\d+)(?: \([^)]*\))?: (.*)", re.DOTALL)


class GradserveError(Exception):
    """Base class of the SDK's errors. ``code`` is the gRPC status code when there is one."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class GraphError(GradserveError, ValueError):
    """The server rejected the graph (INVALID_ARGUMENT).

    ``node`` is the id of the offending node in the graph sent (None for a graph-level
    problem), ``value`` its Value when the SDK built the graph and it is still alive,
    ``reason`` the server's explanation and ``field`` the request field at fault, when the
    server names one.
    """

    def __init__(self, reason: str, *, node=None, value=None, field: str = "") -> None:
        where = f"node {node}" + (
            f" ({value.label!r})" if value is not None and value.label else ""
        )
        super().__init__(
            reason if node is None else f"{where}: {reason}", grpc.StatusCode.INVALID_ARGUMENT
        )
        self.reason = reason
        self.node = node
        self.value = value
        self.field = field


class ServerError(GradserveError):
    """The server failed while evaluating (INTERNAL, e.g. an op plugin's bug), or answered
    with a status the SDK does not expect."""


class ServerUnavailable(GradserveError, ConnectionError):
    """No server answered at the target (UNAVAILABLE): not started, wrong address, or down."""


class DeadlineExceeded(GradserveError, TimeoutError):
    """The call took longer than the client's ``timeout``."""


class AuthError(GradserveError, PermissionError):
    """The server refused the caller (UNAUTHENTICATED: no or a wrong token or certificate;
    PERMISSION_DENIED: authenticated but not allowed); ``code`` says which."""


class ClientClosed(GradserveError, ValueError):
    """A call on a Client that was closed (``close()``, or its ``with`` block ended)."""


class NoServerConfigured(GradserveError, RuntimeError):
    """``backward()`` without a client, and no default server set (``gradserve.client.use``
    or the ``GRADSERVE_TARGET`` environment variable)."""


class GraphvizNotFound(GradserveError, RuntimeError):
    """Rendering a drawing needs Graphviz's ``dot`` program, which is not on the PATH."""


def _graph_error(error: grpc.RpcError, subgraph) -> GraphError:
    """A GraphError from the rich BadRequest details when present, else from the message."""
    violation = None
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details inconsistent with the status: trust the message
        status = None
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request) and bad_request.field_violations:
            violation = bad_request.field_violations[0]
            break
    text = violation.description if violation is not None else (error.details() or "")
    match = _NODE_REASON.fullmatch(text)
    node, reason = (int(match[1]), match[2]) if match else (None, text)
    value = subgraph.value(node) if subgraph is not None and node is not None else None
    return GraphError(reason, node=node, value=value, field=violation.field if violation else "")


def translate(error: grpc.RpcError, subgraph=None) -> GradserveError:
    """The typed exception for a failed call; ``subgraph`` maps node ids back to Values."""
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return _graph_error(error, subgraph)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailable(f"server unavailable: {details}", code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"deadline exceeded: {details}", code)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AuthError(f"{code.name}: {details}", code)
    return ServerError(f"{code.name}: {details}", code)


@contextmanager
def translated(subgraph=None) -> Iterator[None]:
    """Raise the typed exception in place of a gRPC error inside the block."""
    try:
        yield
    except grpc.RpcError as error:
        raise translate(error, subgraph) from None
    except (ValueError, grpc.aio.UsageError) as error:
        # grpc's words for a call on a closed channel ("Cannot invoke RPC on closed
        # channel!", "Cannot invoke RPC: Channel closed!"; grpc.aio's UsageError: "Channel
        # is closed.").
        words = str(error).lower()
        if "channel" in words and "closed" in words:
            raise ClientClosed("the client was closed; make a new Client") from None
        raise
