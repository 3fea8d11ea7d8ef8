"""The op plugin contract: what an entry point in group ``gradserve.ops`` must name."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

Forward = Callable[..., np.ndarray]
Backward = Callable[..., Sequence[np.ndarray]]
Domain = Callable[..., np.ndarray]
Scalar = Callable[..., float]
ScalarBackward = Callable[..., Sequence[float]]
Second = Callable[..., Sequence[np.ndarray]]


class InlineFormulas(Protocol):
    """What an op written as formulas (``gradserve.ops.formulas``) gives the engine's
    compiled small-call path: float code for its value and its inputs' gradients, given
    the code that names each input's value (``xs``), the node's gradient ``g`` and value
    ``y``, and a ``formulas.Code`` that collects temporaries and called functions."""

    def emit_forward(self, xs: Sequence[str], code) -> tuple[list[str], str]: ...

    def emit_backward(
        self, g: str, y: str, xs: Sequence[str], code
    ) -> tuple[list[str], list[str]]: ...


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

    ``scalar(*xs)``, when given, is ``forward`` on Python floats: one float per input, one
    float out. A chain (one node per level) with one row of leaf values would otherwise cost
    a NumPy call on 1-element arrays per node; when every op in it has a scalar forward, the
    engine runs the chain as a loop over floats instead, several times faster. It must give
    ``forward``'s value: exactly for arithmetic, within a few ulp where the C library's
    functions and NumPy's round differently (``math.tanh`` and ``np.tanh`` differ by up to
    3). Where ``math`` raises and NumPy gives inf or NaN (``math.exp(1000)``,
    ``math.log(0)``, ``1.0 / 0.0``), it may raise ``ArithmeticError`` or ``ValueError``: the
    engine then computes that node with ``forward``. Use ``math.pow``, not ``**``, which
    turns a negative base into a complex number. The engine checks for cancellation every
    thousand or so nodes of the loop, not every node, so a scalar forward should take
    microseconds. ``gradcheck`` compares it with ``forward``.

    ``scalar_backward(g, y, *xs)``, when given, is ``backward`` on Python floats: the
    upstream gradient, the output and one float per input in, a tuple of one float per
    input out. A small graph with one row of leaf values whose ops all have a scalar forward
    and a scalar backward is evaluated on floats from start to end, with no NumPy call per
    op: a 10-node graph's call then costs little more than gRPC's own. Like ``scalar``, it
    must give ``backward``'s values to within a few ulp, computing the same formula in the
    same order, and may raise ``ArithmeticError`` or ``ValueError`` where ``math`` raises
    (``math.cosh(1000)``, a division by zero): the engine then evaluates the whole call with
    the array functions. ``gradcheck`` compares it with ``backward``.

    ``second(y, *xs)``, when given, returns the op's local second derivatives, which
    Hessian-vector products (forward-over-reverse) need: for inputs ``x1 .. xk``, the arrays
    ``d2y/dxi dxj`` for every pair ``i <= j`` in row-major upper-triangular order (for two
    inputs: ``d2y/da2, d2y/da db, d2y/db2``), each of the inputs' shape, or an empty tuple
    when every second derivative is zero (an op linear in its inputs: add, sub, neg, sum;
    a variadic sum of n inputs would otherwise return n(n+1)/2 arrays of zeros). At a kink,
    where the first derivative jumps (relu at 0, a tie of max), the convention is 0, as
    PyTorch's. First-order tangents (Jacobian-vector products) need nothing more: the local
    derivatives are ``backward`` with an upstream gradient of 1. A request for second-order
    results through an op without ``second`` is refused, naming the op and the node;
    ``ListOps`` says which ops have it, and ``gradcheck`` compares it with central finite
    differences of ``backward``.

    ``formulas`` is set by ``gradserve.ops.formulas.formula_op``, which builds every function
    above from one set of formulas: an op of fixed arity written that way is inlined in the
    engine's compiled small-call code rather than called.
    """

    name: str
    arity: int | None
    forward: Forward
    backward: Backward
    doc: str = ""
    domain: Domain | None = None
    scalar: Scalar | None = None
    scalar_backward: ScalarBackward | None = None
    second: Second | None = None
    formulas: InlineFormulas | None = None

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


def linear_second(y: np.ndarray, *xs: np.ndarray) -> tuple[()]:
    """The ``second`` of an op linear in its inputs: every second derivative is 0."""
    return ()
