"""The in-process peers: micrograd (with the lecture's tanh) and PyTorch scalar autograd.

Both run the same code: their scalars support `+`, `*` and `.tanh()`. Each peer builds the
graph from the same leaf values as gradserve and returns the leaves' gradients.
"""

import functools
import gc
import math
import operator
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
from micrograd.engine import Value

from bench.graphs import MlpShape


def _tanh(self: Value) -> Value:
    """tanh as Karpathy's micrograd lecture adds it (math.tanh computes t without overflow)."""
    t = math.tanh(self.data)
    out = Value(t, (self,), "tanh")

    def _backward():
        self.grad += (1 - t**2) * out.grad

    out._backward = _backward
    return out


Value.tanh = _tanh


def mlp_loss(leaves: Sequence, shape: MlpShape):
    """The MLP of bench.graphs.mlp over peer scalars, leaves in the same order."""
    activations = leaves[: shape.inputs]
    param = shape.inputs
    for fan_in in shape.fan_ins:
        outputs = []
        for _ in range(shape.width):
            weights, bias = leaves[param : param + fan_in], leaves[param + fan_in]
            param += fan_in + 1
            act = bias
            for w, x in zip(weights, activations, strict=True):
                act = act + w * x
            outputs.append(act.tanh())
        activations = outputs
    return functools.reduce(operator.add, activations)


def chain_output(leaves: Sequence):
    """x, then x = tanh(x + c) for each constant c, as bench.graphs.chain."""
    x = leaves[0]
    for c in leaves[1:]:
        x = (x + c).tanh()
    return x


@dataclass(frozen=True)
class Peer:
    """How to make a peer's leaves, backpropagate from an output, and read leaf gradients."""

    name: str
    version: str
    origin: str  # where it was imported from
    leaf: Callable[[float], object]
    grad: Callable[[object], float]
    backward: Callable[[object], object] = lambda output: output.backward()


def micrograd_peer() -> Peer:
    return Peer(
        "micrograd",
        version("micrograd"),
        sys.modules[Value.__module__].__file__,
        Value,
        lambda v: v.grad,
    )


def torch_peer() -> Peer | None:
    """PyTorch with one 0-d float64 tensor per node, or None when torch is not importable."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)  # scalar ops: threads only add overhead
    return Peer(
        "PyTorch",
        torch.__version__,
        torch.__file__,
        lambda x: torch.tensor(x, dtype=torch.float64, requires_grad=True),
        lambda t: t.grad.item() if t.grad is not None else 0.0,
    )


def timed_backprop(peer: Peer, values: np.ndarray, build: Callable) -> tuple[float, np.ndarray]:
    """Seconds to create the leaves, build the graph and backpropagate; the leaf gradients.

    The garbage of earlier runs is collected first, untimed: micrograd's graphs are reference
    cycles, and the first full collection after a W1 run (about 7 s for its 4.6 million
    objects) otherwise lands in whichever run comes next, the SDK's or micrograd's own.
    """
    gc.collect()
    started = time.perf_counter()
    leaves = [peer.leaf(v) for v in values.tolist()]
    peer.backward(build(leaves))
    elapsed = time.perf_counter() - started
    return elapsed, np.array([peer.grad(leaf) for leaf in leaves])


DEEP_STACK_BYTES = 1 << 30
DEEP_RECURSION_LIMIT = 10_000_000


def in_deep_thread(function: Callable[[], object]) -> object:
    """Run ``function`` in a thread with a 1 GiB stack and a recursion limit of 10 million.

    micrograd's backward sorts the graph with a recursive function, one level per node of a
    chain's depth: at Python's default limit of 1,000 a long chain raises RecursionError, and
    a deep recursion on an ordinary thread's stack could crash the process.
    """
    result: list = []
    failure: list = []

    def run() -> None:
        try:
            result.append(function())
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    old_limit, old_stack = sys.getrecursionlimit(), threading.stack_size()
    sys.setrecursionlimit(DEEP_RECURSION_LIMIT)
    threading.stack_size(DEEP_STACK_BYTES)
    try:
        thread = threading.Thread(target=run, name="deep-recursion")
        thread.start()
        thread.join()
    finally:
        threading.stack_size(old_stack)
        sys.setrecursionlimit(old_limit)
    if failure:
        raise failure[0]
    return result[0]
