"""Typed exceptions for what can go wrong in a call, and the one place gRPC errors become them.

A caller catches ``GradserveError`` for everything, or a subclass for one cause; the gRPC
error is not chained, so a user sees one clear message rather than a gRPC traceback. Each
message is one line that says what to do; ``docs/sdk/errors.md`` lists them all.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import grpc.aio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gradserve.client import unreachable

# "node 7: reason", or with the node's label quoted as Python quotes a string (either quote,
# with escapes, any characters inside), cut and followed by its length when long:
# "node 7 ('x1*w1'): reason", "node 7 ('log(x…' (1048576 characters)): reason".
_NODE_REASON = re.compile(
    r"node (\d+)"
    r"""(?: \((?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")(?: \(\d+ characters\))?\))?"""
    r": (.*)",
    re.DOTALL,
)


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
    """The call took longer than its timeout (the client's ``timeout``, a call's own, or the
    server's default deadline); ``timeout`` is the client's, None when it set none."""

    def __init__(self, message: str, code=None, timeout: float | None = None) -> None:
        super().__init__(message, code)
        self.timeout = timeout


class ResourceExhausted(GradserveError):
    """The server refused the call for want of a resource (RESOURCE_EXHAUSTED): its memory
    budget, its call slots, or a size limit on requests.

    ``subject`` names the server's limit (``max-memory-mb``, ``max-concurrent-calls``, or the
    request field at fault); for the memory budget ``estimate`` is what the server estimated
    the call needs and ``limit`` the budget, both in bytes (None when the server did not say).
    """

    def __init__(self, message: str, *, subject: str = "", estimate=None, limit=None) -> None:
        super().__init__(message, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.subject = subject
        self.estimate = estimate
        self.limit = limit


class AuthError(GradserveError, PermissionError):
    """The server refused the caller (UNAUTHENTICATED: no or a wrong token or certificate;
    PERMISSION_DENIED: authenticated but not allowed); ``code`` says which."""


class ClientClosed(GradserveError, ValueError):
    """A call on a Client that was closed (``close()``, or its ``with`` block ended)."""


class NoServerConfigured(GradserveError, RuntimeError):
    """``backward()`` without a client, or reading ``.data`` of a Value not evaluated yet, and
    no default server set (``gradserve.client.use`` or the ``GRADSERVE_TARGET`` environment
    variable)."""


class GraphvizNotFound(GradserveError, RuntimeError):
    """Rendering a drawing needs Graphviz's ``dot`` program, which is not on the PATH."""


def _graph_error(error: grpc.RpcError, subgraph) -> GraphError:
    """A GraphError from the rich BadRequest details when present, else from the message."""
    violation = None
    for detail in _details(error):
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request) and bad_request.field_violations:
            violation = bad_request.field_violations[0]
            break
    text = violation.description if violation is not None else (error.details() or "")
    match = _NODE_REASON.fullmatch(text)
    node, reason = (int(match[1]), match[2]) if match else (None, text)
    value = subgraph.value(node) if subgraph is not None and node is not None else None
    return GraphError(reason, node=node, value=value, field=violation.field if violation else "")


# As the Node.js and Go clients say it (tests/test_client_messages.py).
DEADLINE = (
    "the call took longer than its timeout of {timeout} s: pass a larger timeout, "
    "or send a smaller graph"
)


@dataclass(frozen=True)
class Where:
    """What an error message names besides the server's words: the target the client was
    given, whether its channel uses TLS, and the call's timeout (seconds, None for none)."""

    target: str = ""
    tls: bool = False
    timeout: float | None = None


def translate(error: grpc.RpcError, subgraph=None, where: Where = Where()) -> GradserveError:
    """The typed exception for a failed call; ``subgraph`` maps node ids back to Values."""
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return _graph_error(error, subgraph)
    if code == grpc.StatusCode.UNAVAILABLE:
        message, refused_by_tls = unreachable.explain(details, where.target, where.tls)
        return (AuthError if refused_by_tls else ServerUnavailable)(message, code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return _deadline(details, where)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return _resource_exhausted(error)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AuthError(f"{code.name}: {details}", code)
    return ServerError(f"{code.name}: {details}", code)


def _deadline(details: str, where: Where) -> DeadlineExceeded:
    """gRPC says "Deadline Exceeded"; the message names the timeout and what to change."""
    if where.timeout is not None:
        message = DEADLINE.format(timeout=f"{where.timeout:g}")
    else:  # no client timeout: the server's default deadline ended it, in its words
        message = f"the call passed the server's deadline: {details}"
    return DeadlineExceeded(message, grpc.StatusCode.DEADLINE_EXCEEDED, where.timeout)


def _resource_exhausted(error: grpc.RpcError) -> ResourceExhausted:
    """The server's message, with the limit and estimate of its QuotaFailure (or the field
    of its BadRequest) as attributes."""
    details = error.details() or ""
    subject, estimate, limit = "", None, None
    for detail in _details(error):
        quota, bad_request = error_details_pb2.QuotaFailure(), error_details_pb2.BadRequest()
        if detail.Unpack(quota) and quota.violations:
            violation = quota.violations[0]
            subject = violation.subject
            limit = violation.quota_value or None
            estimate = violation.quota_dimensions.get("estimate_bytes")
            estimate = int(estimate) if estimate and estimate.isdigit() else None
        elif detail.Unpack(bad_request) and bad_request.field_violations:
            subject = bad_request.field_violations[0].field
    if subject == "max-memory-mb" and None not in (estimate, limit) and estimate > limit:
        details += "; send fewer nodes or rows, or start the server with a larger --max-memory-mb"
    return ResourceExhausted(details, subject=subject, estimate=estimate, limit=limit)


def _details(error: grpc.RpcError) -> list:
    """The rich status details (google.protobuf.Any) of a failed call, [] without any."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details inconsistent with the status: trust the message
        return []
    return list(status.details) if status is not None else []


@contextmanager
def translated(subgraph=None, where: Where = Where()) -> Iterator[None]:
    """Raise the typed exception in place of a gRPC error inside the block."""
    try:
        yield
    except grpc.RpcError as error:
        raise translate(error, subgraph, where) from None
    except (ValueError, grpc.aio.UsageError) as error:
        # grpc's words for a call on a closed channel ("Cannot invoke RPC on closed
        # channel!", "Cannot invoke RPC: Channel closed!"; grpc.aio's UsageError: "Channel
        # is closed.").
        words = str(error).lower()
        if "channel" in words and "closed" in words:
            raise ClientClosed("the client was closed; make a new Client") from None
        raise
