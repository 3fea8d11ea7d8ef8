"""Errors the engine raises; the servicer maps each to a gRPC status in one place."""

from collections.abc import Sequence

QUOTE_LIMIT = 64  # characters of a client's string quoted back in a message


def quote(text: str) -> str:
    """``text``, a string the client sent, quoted for a message and bounded: cut to
    QUOTE_LIMIT characters with an ellipsis and the full length, so that a megabyte label
    or op name never makes a megabyte error message (or log line). A ``Cut`` string is
    quoted with the length it had."""
    length = getattr(text, "length", len(text))
    if length <= QUOTE_LIMIT:
        return repr(str(text))
    return f"{str(text)[:QUOTE_LIMIT] + '…'!r} ({length} characters)"


class Cut(str):
    """The first QUOTE_LIMIT characters of a longer client string, with its ``length``:
    what a plan keeps of a label, all that a message quotes."""

    length: int

    def __new__(cls, text: str) -> "Cut":
        cut = super().__new__(cls, text[:QUOTE_LIMIT])
        cut.length = len(text)
        return cut


def cut(text: str) -> str:
    """``text`` itself when a message would quote it whole, else its ``Cut``."""
    return text if len(text) <= QUOTE_LIMIT else Cut(text)


class EvaluationError(Exception):
    """Base class for the errors of one evaluation."""


class NodeError(EvaluationError):
    """An error that may name a node: its message reads ``node 7 ('x1*w1'): reason`` once
    :meth:`label_from` has found the node's label, ``node 7: reason`` before."""

    def __init__(self, reason: str, node: int | None) -> None:
        self.reason = reason
        self.node = node
        self.label = ""
        super().__init__(reason)

    def label_from(self, labels: Sequence[str]) -> None:
        """Take the node's label from the graph's ``labels`` (when it has one) for the
        message; the engine raises without it, the servicer knows the graph."""
        if self.node is not None and 0 <= self.node < len(labels):
            self.label = labels[self.node]

    def __str__(self) -> str:
        if self.node is None:
            return self.reason
        where = f"node {self.node} ({quote(self.label)})" if self.label else f"node {self.node}"
        return f"{where}: {self.reason}"


class GraphError(NodeError):
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
        super().__init__(reason, node)
        self.field = field
        self.index = index


class OpFailure(NodeError):
    """An op plugin raised or returned a malformed result: the plugin's fault, not the
    client's. The plugin's own exception is chained as ``__cause__`` for the server log."""

    def __init__(self, op: str, node: int, problem: str) -> None:
        super().__init__(f"op {op!r} {problem}", node)
        self.op = op


class Cancelled(EvaluationError):
    """The caller went away (cancelled, or its deadline passed); the work was abandoned."""


class PlanNotFound(EvaluationError):
    """A request named a plan digest this server does not hold (evicted, or never seen)."""

    def __init__(self, digest: bytes) -> None:
        super().__init__(
            f"no cached plan with digest {digest.hex()}: it was evicted or compiled by another "
            "server process; send the whole graph again"
        )
