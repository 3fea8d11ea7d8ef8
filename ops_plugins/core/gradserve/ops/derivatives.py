"""Second derivatives derived from an op's formulas, for an op written without them.

An op's ``grads`` formula is its upstream gradient times each input's local derivative
``d_i``; differentiating the traced ``d_i`` (``grads`` with an upstream gradient of 1) by
each input ``x_j`` gives ``d2y/dxi dxj``. The rules are the usual ones, with ``y`` a
function of the inputs (``dy/dxj = d_j``), comparisons constant (a mask such as ``x > 0``
changes only at a kink, where the convention is 0) and ``where`` differentiated branch by
branch. Zeros are folded away as the expressions are built, so an input that a derivative
does not depend on adds nothing (and no ``0 * inf``). A formula calling an ``Elementwise``
function has no derived second derivatives: its derivative is not known here.

What a formula decides at a single point is differentiated as it is written: a special case
``m.where(p == 0, 0.0, ...)`` is constant in ``p`` at 0, and ``m.abs`` inside a smooth
expression has the kink convention's derivative 0 at 0, so the derived result can be wrong
exactly there (the standard pow and softplus write their second derivatives for that
reason). ``gradserve ops check`` compares second derivatives, derived or written, with
finite differences and shows such points.
"""

from gradserve.ops.expressions import EMIT, Expr

_ZERO, _ONE = Expr("const", 0.0), Expr("const", 1.0)


class NotDerivable(Exception):
    """The formulas use something whose derivative is not known (an Elementwise call)."""


def _const(e: Expr, value: float) -> bool:
    return e.kind == "const" and e.operands[0] == value


def _add(a: Expr, b: Expr) -> Expr:
    return b if _const(a, 0.0) else a if _const(b, 0.0) else a + b


def _sub(a: Expr, b: Expr) -> Expr:
    return a if _const(b, 0.0) else -b if _const(a, 0.0) else a - b


def _mul(a: Expr, b: Expr) -> Expr:
    if _const(a, 0.0) or _const(b, 0.0):
        return _ZERO
    return b if _const(a, 1.0) else a if _const(b, 1.0) else a * b


def _div(a: Expr, b: Expr) -> Expr:
    return _ZERO if _const(a, 0.0) else a / b


def _neg(a: Expr) -> Expr:
    return _ZERO if _const(a, 0.0) else -a


_BOOLEAN = ("<", "<=", ">", ">=", "==", "!=", "|", "&")


class _Derivative:
    """d/dx of expressions over the symbols ``xs`` and ``y``, memoised per node."""

    def __init__(self, x: Expr, xs: list[Expr], y: Expr, dy: Expr) -> None:
        self._known = {id(s): _ONE if s is x else _ZERO for s in xs}
        self._known[id(y)] = dy
        self._x = x

    def of(self, e: Expr) -> Expr:
        # Formulas are a handful of nodes deep: recursion over them is bounded by the
        # plugin's source, not by any graph a client sends.
        known = self._known.get(id(e))
        if known is None:
            known = self._known[id(e)] = self._rule(e)
        return known

    def _rule(self, e: Expr) -> Expr:
        kind, ops = e.kind, e.operands
        if kind in ("const", "symbol") or kind in _BOOLEAN or kind == "sign":
            return _ZERO  # a symbol not known here is the upstream gradient: a constant
        if kind == "call":
            raise NotDerivable(ops[0].name)
        d = [self.of(o) for o in ops]
        a = ops[0]
        if kind == "+":
            return _add(d[0], d[1])
        if kind == "-":
            return _sub(d[0], d[1])
        if kind == "*":
            return _add(_mul(d[0], ops[1]), _mul(a, d[1]))
        if kind == "/":
            return _div(_sub(d[0], _mul(e, d[1])), ops[1])
        if kind == "neg":
            return _neg(d[0])
        if kind == "where":
            return _ZERO if _const(d[1], 0.0) and _const(d[2], 0.0) else EMIT.where(a, d[1], d[2])
        if kind == "maximum":
            return EMIT.where(a >= ops[1], d[0], d[1])
        if kind == "minimum":
            return EMIT.where(a <= ops[1], d[0], d[1])
        if kind == "logaddexp":
            wa, wb = EMIT.exp(a - e), EMIT.exp(ops[1] - e)
            return _add(_mul(wa, d[0]), _mul(wb, d[1]))
        if kind == "power":  # as the standard pow: the part through p only where x > 0
            through_x = _mul(_mul(ops[1], EMIT.power(a, ops[1] - 1.0)), d[0])
            log_a = EMIT.log(EMIT.where(a > 0.0, a, 1.0))
            through_p = _mul(EMIT.where(a > 0.0, e * log_a, 0.0), d[1])
            return _add(through_x, through_p)
        local = {
            "exp": lambda: e,
            "log": lambda: 1.0 / a,
            "log1p": lambda: 1.0 / (1.0 + a),
            "sqrt": lambda: 0.5 / e,
            "tanh": lambda: 1.0 / EMIT.square(EMIT.cosh(a)),
            "cosh": lambda: EMIT.sinh(a),
            "sinh": lambda: EMIT.cosh(a),
            "sin": lambda: EMIT.cos(a),
            "cos": lambda: -EMIT.sin(a),
            "abs": lambda: EMIT.sign(a),
            "square": lambda: 2.0 * a,
        }
        if kind not in local:
            raise NotDerivable(kind)
        return _ZERO if _const(d[0], 0.0) else _mul(local[kind](), d[0])


def second_of(grads, y: Expr, xs: list[Expr]) -> list[Expr]:
    """``d2y/dxi dxj`` for the pairs i <= j in row-major order, from ``grads(m, g, y, *xs)``
    traced with an upstream gradient of 1; raises NotDerivable."""
    local = [
        d if isinstance(d, Expr) else Expr("const", float(d)) for d in grads(EMIT, _ONE, y, *xs)
    ]
    pairs = []
    for i in range(len(xs)):
        for j in range(i, len(xs)):
            pairs.append(_Derivative(xs[j], xs, y, local[j]).of(local[i]))
    return pairs
