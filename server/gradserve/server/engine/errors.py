"""Errors the engine raises; the servicer maps each to a gRPC status in one place."""


class EvaluationError(Exception):
    """Base class for the errors of one evaluation."""


class GraphError(EvaluationError):
    """The request is not a valid graph evaluation: the client's fault.

    ``node`` is the id of the offending node when there is one; ``field`` names the request
    field at fault and ``index``, when given, the entry of that field (for ``graph.op_names``
    an op-table index, for ``graph.input_ids`` a position in that array: not always a node).
    """

    def __init__(
        self,
        reason: str,
        *,
        node: int | None = None,
        field: str = "graph",
        index: int | None = None,
    ) -> None:
        self.reason = reason
        self.node = node
        self.field = field
        self.index = index
        super().__init__(reason if node is None else f"node {node}: {reason}")


class OpFailure(EvaluationError):
    """An op plugin raised or returned a malformed result: the plugin's fault, not the
    client's. The plugin's own exception is chained as ``__cause__`` for the server log."""

    def __init__(self, op: str, node: int, problem: str) -> None:
        self.op = op
        self.node = node
        super().__init__(f"node {node}: op {op!r} {problem}")


class Cancelled(EvaluationError):
    """The caller went away (cancelled, or its deadline passed); the work was abandoned."""


class PlanNotFound(EvaluationError):
    """A request named a plan digest this server does not hold (evicted, or never seen)."""

    def __init__(self, digest: bytes) -> None:
        super().__init__(
            f"no cached plan with digest {digest.hex()}: it was evicted or compiled by another "
            "server process; send the whole graph again"
        )
