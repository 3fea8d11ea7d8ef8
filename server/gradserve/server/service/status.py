"""Rich gRPC statuses: a BadRequest field violation for every client error, an error id
for every unexpected one.

Clients read the violations with ``grpc_status.rpc_status.from_call(error)``; the message
text stays readable for people.
"""

import logging
import uuid

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gradserve.server.engine.errors import GraphError

log = logging.getLogger(__name__)


def violation_field(exc: GraphError) -> str:
    """The BadRequest field path: ``graph.input_ids`` or, with a node, ``graph.input_ids[7]``
    where 7 is the offending node's id. A field that names its own entry (``graph.op_names[2]``,
    the op table's third name) is kept as it is; the message names the node."""
    if exc.node is None or exc.field.endswith("]"):
        return exc.field
    return f"{exc.field}[{exc.node}]"


def abort_bad_request(
    context: grpc.ServicerContext, code: grpc.StatusCode, exc: GraphError
) -> None:
    """Abort the call with ``code``, the error's text and one BadRequest field violation."""
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=violation_field(exc), description=str(exc)
    )
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=str(exc), details=[detail]
    )
    context.abort_with_status(rpc_status.to_status(status))


def abort_internal(
    context: grpc.ServicerContext, method: str, public: str = "internal server error"
) -> None:
    """Log the exception being handled under a fresh error id and abort with INTERNAL.

    The client sees ``public`` and the id, never the exception's text or traceback; the
    operator finds both in the server log under the same id.
    """
    error_id = uuid.uuid4().hex[:12]
    log.exception("%s: %s (error id %s)", method, public, error_id)
    context.abort(grpc.StatusCode.INTERNAL, f"{public} (error id {error_id}, see server log)")
