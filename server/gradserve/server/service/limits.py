"""Server limits: how big a graph, how wide a node, how many calls, how long a call.

The defaults are sized for real use on a 24 GiB machine. Measured peak memory of a server
above idle (request, arrays, plan, response): about 120 bytes a node for a wide graph (W1)
and 370 for a long chain (W2), so a graph at the 20-million-node limit needs 2 to 7 GiB. At
the default 64 MiB message limit a request carries at most about 7 million nodes of a wide
graph; raise --max-message-mb to send more. The size checks read only the lengths of the
request's repeated fields, so they run before any array is allocated.
"""

import functools
import math
import time
from dataclasses import dataclass

import numpy as np

from gradserve.server.engine.errors import Cancelled, GraphError
from gradserve.v1 import gradserve_pb2 as pb

DEFAULT_MAX_NODES = 20_000_000
DEFAULT_MAX_FAN_IN = 1_000_000
# Calls in progress: what they hold is bounded by the memory budget and what they compute by
# --threads; this bounds their bookkeeping. Issue 19's soak: twenty stalled readers, one
# pipelining connection and never-read streams held 64 slots at once, leaving none for the
# legitimate clients.
DEFAULT_MAX_CONCURRENT_CALLS = 256
DEFAULT_DEADLINE_S = 300.0
DEFAULT_REQUEST_TIMEOUT_S = 30.0
CONNECTION_SHARE = 4  # by default one connection may hold a quarter of max-concurrent-calls
TOKEN_SHARE = 2  # and one token, of several accepted, half of them
_NO_DEADLINE_S = 1e9  # gRPC reports an "infinite" deadline as a remainder of centuries


class LimitExceeded(GraphError):
    """The request is well formed but larger than this server accepts (RESOURCE_EXHAUSTED)."""


class DeadlineExceeded(Cancelled):
    """The call ran past the server's default deadline (the caller set none)."""


@dataclass(frozen=True)
class Limits:
    max_nodes: int = DEFAULT_MAX_NODES
    max_fan_in: int = DEFAULT_MAX_FAN_IN
    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS
    default_deadline_s: float = DEFAULT_DEADLINE_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S  # for the request to arrive
    calls_per_connection: int | None = None  # None: max_concurrent_calls / CONNECTION_SHARE
    calls_per_token: int | None = None  # None: max_concurrent_calls / TOKEN_SHARE

    @functools.cached_property  # read by every call
    def max_calls_per_connection(self) -> int:
        if self.calls_per_connection is not None:
            return self.calls_per_connection
        return max(1, self.max_concurrent_calls // CONNECTION_SHARE)

    @property
    def max_calls_per_token(self) -> int:
        """Calls one bearer token may have in progress, when the server accepts several."""
        if self.calls_per_token is not None:
            return self.calls_per_token
        return max(1, self.max_concurrent_calls // TOKEN_SHARE)

    def check_sizes(self, request: pb.EvaluateRequest) -> None:
        """Reject a graph with too many nodes, or more inputs than its nodes may read, in
        O(1): before anything is converted or allocated."""
        graph = request.graph
        n = len(graph.node_ops)
        if n > self.max_nodes:
            raise LimitExceeded(
                f"the graph has {n} nodes, more than this server's limit max-nodes = "
                f"{self.max_nodes}",
                field="graph.node_ops",
            )
        if len(graph.input_ids) > n * self.max_fan_in:
            raise LimitExceeded(
                f"input_ids has {len(graph.input_ids)} entries, more than {n} nodes may read "
                f"under the limit max-fan-in = {self.max_fan_in}",
                field="graph.input_ids",
            )

    def check_fan_in(self, input_counts: np.ndarray) -> None:
        """Reject a node that reads more inputs than max-fan-in, naming the first such node."""
        wide = np.flatnonzero(input_counts > self.max_fan_in)
        if wide.size:
            node = int(wide[0])
            raise LimitExceeded(
                f"the node reads {int(input_counts[node])} inputs, more than this server's "
                f"limit max-fan-in = {self.max_fan_in}",
                node=node,
                field="graph.input_counts",
                index=node,
            )

    def caller_deadline(self, time_remaining: float | None) -> float:
        """The monotonic time of the caller's own deadline; inf when it set none."""
        if time_remaining is None or time_remaining >= _NO_DEADLINE_S:
            return math.inf
        return time.monotonic() + time_remaining

    def deadline(self, time_remaining: float | None) -> float:
        """The monotonic time at which a call must stop: the caller's own deadline, or the
        server's default when the caller set none."""
        if time_remaining is None or time_remaining >= _NO_DEADLINE_S:
            time_remaining = self.default_deadline_s
        return time.monotonic() + time_remaining
