"""The expressions that formulas build when traced (``gradserve.ops.formulas``): ``Expr``
nodes, the ``EMIT`` namespace that makes them, and ``Elementwise`` functions that formulas
may call beyond the namespace's."""

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np


class Expr:
    """A node of a traced formula: ``kind`` and its operands (Exprs or floats).

    Operators build new nodes; nodes compare and hash by identity, so a node used twice is
    one node (and rendered once), however it was written."""

    __slots__ = ("kind", "operands")

    def __init__(self, kind: str, *operands: object) -> None:
        self.kind = kind
        self.operands = operands

    def __add__(self, other):
        return Expr("+", self, as_expr(other))

    def __radd__(self, other):
        return Expr("+", as_expr(other), self)

    def __sub__(self, other):
        return Expr("-", self, as_expr(other))

    def __rsub__(self, other):
        return Expr("-", as_expr(other), self)

    def __mul__(self, other):
        return Expr("*", self, as_expr(other))

    def __rmul__(self, other):
        return Expr("*", as_expr(other), self)

    def __truediv__(self, other):
        return Expr("/", self, as_expr(other))

    def __rtruediv__(self, other):
        return Expr("/", as_expr(other), self)

    def __neg__(self):
        return Expr("neg", self)

    def __lt__(self, other):
        return Expr("<", self, as_expr(other))

    def __le__(self, other):
        return Expr("<=", self, as_expr(other))

    def __gt__(self, other):
        return Expr(">", self, as_expr(other))

    def __ge__(self, other):
        return Expr(">=", self, as_expr(other))

    def __eq__(self, other):  # type: ignore[override]
        return Expr("==", self, as_expr(other))

    def __ne__(self, other):  # type: ignore[override]
        return Expr("!=", self, as_expr(other))

    def __or__(self, other):
        return Expr("|", self, as_expr(other))

    def __and__(self, other):
        return Expr("&", self, as_expr(other))

    def round(self, decimals: int = 0, out=None):
        """What ``np.round(x)`` makes of an expression (NumPy calls this method): an op's
        domain may test for an integer, as pow's does with ``p == np.round(p)``. On floats
        it is Python's ``round``, which rounds half to even as NumPy does."""
        if decimals != 0 or out is not None:
            raise ValueError("only np.round(x), to an integer, is traced")
        return Expr("round", self)

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise TypeError(
            "a formula cannot branch on its inputs with `if`, `and` or `or`: use m.where, & and |"
        )


def as_expr(x: object) -> Expr:
    """``x`` as an expression: itself, or a constant for a number."""
    if isinstance(x, Expr):
        return x
    if isinstance(x, bool | int | float):
        return Expr("const", float(x))
    raise TypeError(f"a formula can combine only expressions and numbers, not {x!r}")


@dataclass(frozen=True, eq=False)
class Elementwise:
    """A function that formulas may call beyond the namespace's (``erf``): its array form
    and, if it has one, its float form. Called with expressions it is traced, with floats it
    is its float form, with arrays its array form."""

    name: str
    array: Callable[..., np.ndarray]
    scalar: Callable[..., float] | None = None

    def __call__(self, *args):
        if any(isinstance(a, Expr) for a in args):
            return Expr("call", self, *map(as_expr, args))
        if self.scalar is not None and all(isinstance(a, float) for a in args):
            return self.scalar(*args)
        return self.array(*args)


def _calls(name: str, arity: int = 1):
    return lambda *args: Expr(name, *map(as_expr, args[:arity]))


# The namespace's functions: NumPy's of the same name on arrays; on floats, those of math
# (the first row) or the forms below (None: no float form).
MATH_FUNCTIONS = ("exp", "log", "log1p", "sqrt", "tanh", "cosh", "sinh", "sin", "cos")
NUMPY_FUNCTIONS = (
    *MATH_FUNCTIONS,
    "abs",
    "sign",
    "square",
    "power",
    "maximum",
    "minimum",
    "logaddexp",
)


def add_all(xs: Sequence):
    """x1 + x2 + ... + xn, added left to right."""
    return functools.reduce(operator.add, xs)


_TWO_OPERANDS = ("power", "maximum", "minimum", "logaddexp")
# The namespace that traces formulas: each function builds an Expr.
EMIT = SimpleNamespace(
    **{name: _calls(name, 2 if name in _TWO_OPERANDS else 1) for name in NUMPY_FUNCTIONS},
    where=_calls("where", 3),
    total=add_all,
)
