"""Helpers for the hardening tests: servers with custom options, rich statuses, slow ops."""

import threading
import time

import grpc
import numpy as np
from google.rpc import error_details_pb2
from graphs import GraphBuilder
from grpc_status import rpc_status

from gradserve.ops import Op
from gradserve.server.registry import LoadedOp


def violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of the google.rpc.BadRequest in an error's status."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status"
    found = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request), detail.type_url
        found += [(v.field, v.description) for v in bad_request.field_violations]
    return found


class SlowOp:
    """An identity op that sleeps ``seconds`` per call (one call per group) and counts calls;
    ``release`` ends every sleep early."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0
        self.release = threading.Event()
        self.op = Op("slow", 1, forward=self._forward, backward=lambda g, y, x: (g.copy(),))

    def _forward(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.release.wait(self.seconds)
        return x.copy()

    def registry(self, base) -> dict[str, LoadedOp]:
        return {**base, "slow": LoadedOp(self.op, "slow", "tests", "0")}


def chain(op: str, length: int, start: float = 0.5) -> GraphBuilder:
    """A leaf followed by ``length`` applications of ``op``, each reading the previous node."""
    g = GraphBuilder()
    node = g.leaf(start)
    for _ in range(length):
        node = g.op(op, node)
    return g


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
