"""The op plugin contract: what an entry point in group ``gradserve.ops`` must name."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Forward = Callable[..., np.ndarray]
Backward = Callable[..., Sequence[np.ndarray]]
Domain = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Op:
    """One scalar operation, applied elementwise to float64 NumPy arrays.

    The engine calls an op once per group of nodes that apply it at the same depth, so
    ``forward(*xs)`` receives one array per input position (all of the same shape) and
    returns the outputs, and ``backward(g, y, *xs)`` receives the upstream gradients ``g``,
    the forward outputs ``y`` and the inputs, and returns one gradient array per input
    (the local derivative times ``g``). The engine accumulates these with ``+=``, so an
    input used twice, as in ``x*x``, gets both contributions.

    ``arity`` is the fixed number of inputs, or ``None`` for a variadic op (one or more
    inputs). ``doc`` states what the op computes, its domain and its derivative convention
    at non-differentiable points; ``ListOps`` shows it to clients.

    ``domain(*xs)``, when given, returns a boolean array that is True where the inputs are
    inside the op's domain (``x > 0`` for log). The engine checks it before ``forward`` and
    reports inputs outside it as the client's error, naming the node; gradient checkers
    sample test points from it.
    """

    name: str
    arity: int | None
    forward: Forward
    backward: Backward
    doc: str = ""
    domain: Domain | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"op name must be a non-empty identifier, got {self.name!r}")
        if self.arity is not None and self.arity < 1:
            raise ValueError(f"op {self.name!r}: arity must be >= 1 or None (variadic)")

    @property
    def variadic(self) -> bool:
        return self.arity is None

    def accepts(self, n_inputs: int) -> bool:
        """Whether a node with ``n_inputs`` inputs may apply this op."""
        return n_inputs >= 1 if self.arity is None else n_inputs == self.arity
