"""Rich gRPC statuses: a BadRequest field violation for every client error, an error id
for every unexpected one, and every text bounded.

Clients read the violations with ``grpc_status.rpc_status.from_call(error)``; the message
text stays readable for people. A status is built here as a ``grpc.Status`` and the call
ends with it in one place (``calls.py``).
"""

import logging
import uuid

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gradserve.server.engine.errors import GraphError

log = logging.getLogger(__name__)

MAX_TEXT = 2048  # characters of a status message or detail: far below gRPC's metadata limits


def bounded(text: str) -> str:
    """``text`` cut to MAX_TEXT characters, saying how long it was: a last line of defence
    for messages that quote what a client sent."""
    if len(text) <= MAX_TEXT:
        return text
    return f"{text[: MAX_TEXT - 40]}… ({len(text)} characters in all)"


def violation_field(exc: GraphError) -> str:
    """The BadRequest field path: ``graph.input_ids``, or ``graph.input_ids[7]`` where 7 is
    the entry of that field at fault (the node, when there is one, is in the description)."""
    return exc.field if exc.index is None else f"{exc.field}[{exc.index}]"


def _status(code: grpc.StatusCode, message: str, *details) -> grpc.Status:
    packed = []
    for detail in details:
        wrapped = any_pb2.Any()
        wrapped.Pack(detail)
        packed.append(wrapped)
    return rpc_status.to_status(
        status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
    )


def bad_request(code: grpc.StatusCode, exc: GraphError) -> grpc.Status:
    """``code`` with the error's text and one BadRequest field violation."""
    message = bounded(str(exc))
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=bounded(violation_field(exc)), description=message
    )
    return _status(code, message, error_details_pb2.BadRequest(field_violations=[violation]))


def quota_failure(
    subject: str, message: str, *, limit: int = 0, estimate: int | None = None
) -> grpc.Status:
    """RESOURCE_EXHAUSTED for a server-wide limit (not the request's own size), with a
    QuotaFailure naming the limit: retrying later may succeed.

    ``limit`` (the violation's ``quota_value``) is the limit's value, in bytes for the memory
    budget; ``estimate`` (``quota_dimensions["estimate_bytes"]``) what the server estimated
    the call needs, so that clients can show both without parsing the message."""
    violation = error_details_pb2.QuotaFailure.Violation(
        subject=subject, description=message, quota_value=limit
    )
    if estimate is not None:
        violation.quota_dimensions["estimate_bytes"] = str(estimate)
    return _status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message,
        error_details_pb2.QuotaFailure(violations=[violation]),
    )


def plain(code: grpc.StatusCode, message: str) -> grpc.Status:
    return _status(code, bounded(message))


def internal(method: str, public: str = "internal server error") -> grpc.Status:
    """Log the exception being handled under a fresh error id; INTERNAL with ``public`` and
    the id.

    The client never sees the exception's text or traceback; the operator finds both in the
    server log under the same id.
    """
    error_id = uuid.uuid4().hex[:12]
    log.exception("%s: %s (error id %s)", method, public, error_id)
    return plain(grpc.StatusCode.INTERNAL, f"{public} (error id {error_id}, see server log)")
