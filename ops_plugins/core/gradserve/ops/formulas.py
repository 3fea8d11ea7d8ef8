"""Ops written once, as formulas, and turned into array code, float code and inline code.

A plugin writes an op's value and its local derivatives as Python functions of a math
namespace ``m`` (``m.exp``, ``m.where``, ``m.square``, ...) and of its inputs, with the
usual operators::

    def value(m, x):
        return m.tanh(x)

    def grads(m, g, y, x):  # one gradient per input: the upstream g times d/dx
        return (g / m.square(m.cosh(x)),)

    tanh = formula_op("tanh", 1, value=value, grads=grads, doc="...")

``formula_op`` calls each function once with the code emitter (``EMIT``): the inputs are
symbols, so the result is an expression tree, which is rendered as NumPy code (the op's
``forward``, ``backward`` and ``second``), as code on Python floats with ``math`` (its
``scalar`` and ``scalar_backward``), and, through ``Formulas.emit_forward`` and
``emit_backward``, as the lines of straight-line code that the engine's compiled small-call
path inlines. The same functions also run directly on arrays with ``ARRAY``, the NumPy
namespace, which is how a variadic op's array functions work (its input count is known
only at the call). So each formula is written once, micrograd's ``_backward`` beside the
forward; the older explicit ``Op(forward=..., backward=..., scalar=..., ...)`` stays.

Rendered code computes exactly what the formula says, in the order it says it, on arrays
and on floats alike (``m.square(c)`` is ``c * c`` on floats, as ``np.square`` rounds), so the
float code gives the array code's results wherever ``math`` and NumPy's functions agree. On
floats ``m.where(c, a, b)`` evaluates only the branch taken, so a branch may raise
(``math.pow(0.0, -1.0)``) where the other is chosen. An expression used more than once is
computed once, before the result, into a temporary: such shared expressions must be safe to
evaluate wherever the formula is (``m.exp(-m.abs(x))``, a comparison).
"""

import functools
import math
import operator
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from gradserve.ops.contract import Domain, Op
from gradserve.ops.derivatives import NotDerivable, second_of
from gradserve.ops.expressions import (
    EMIT,
    MATH_FUNCTIONS,
    NUMPY_FUNCTIONS,
    Elementwise,
    Expr,
    add_all,
    as_expr,
)

__all__ = [
    "ARRAY",
    "EMIT",
    "FLOAT",
    "Code",
    "Elementwise",
    "Formulas",
    "emit_condition",
    "formula_op",
]

ARRAY_NAMESPACE = {"np": np}
FLOAT_NAMESPACE = {"math": math}


class NoFloatForm(Exception):
    """A formula uses a function that has no form on Python floats (``m.logaddexp``)."""


# The NumPy namespace: the same functions as EMIT's, on arrays.
ARRAY = SimpleNamespace(
    **{name: getattr(np, name) for name in NUMPY_FUNCTIONS},
    where=np.where,
    total=lambda xs: functools.reduce(np.add, xs),
)
# The namespace of Python floats, for a variadic op's float functions: the float forms of
# EMIT's functions, except that ``where`` gets both branches computed (a formula run
# directly cannot skip one).
FLOAT = SimpleNamespace(
    **{name: getattr(math, name) for name in MATH_FUNCTIONS},
    abs=abs,
    power=math.pow,
    square=lambda x: x * x,
    where=lambda c, a, b: a if c else b,
    maximum=lambda a, b: a if a > b or a != a else b,
    minimum=lambda a, b: a if a < b or a != a else b,
    sign=lambda x: 1.0 if x > 0.0 else -1.0 if x < 0.0 else 0.0 if x == 0.0 else x,
    total=add_all,
)

_OPERATORS = ("+", "-", "*", "/", "<", "<=", ">", ">=", "==", "!=", "|", "&")

# On floats, the other functions' forms (None: no float form).
_FLOAT_CODE: dict[str, Callable[..., str] | None] = {
    "where": lambda c, a, b: f"({a} if {c} else {b})",
    "abs": lambda a: f"abs({a})",
    "power": lambda a, b: f"math.pow({a}, {b})",
    "square": lambda a: f"({a} * {a})",
    # As np.maximum and np.minimum: NaN if either is NaN, b on a tie (the sign of a zero).
    "maximum": lambda a, b: f"({a} if {a} > {b} or {a} != {a} else {b})",
    "minimum": lambda a, b: f"({a} if {a} < {b} or {a} != {a} else {b})",
    # As np.sign: 0.0 at either zero, NaN at NaN.
    "sign": lambda a: f"(1.0 if {a} > 0.0 else -1.0 if {a} < 0.0 else 0.0 if {a} == 0.0 else {a})",
    "logaddexp": None,
    "round": lambda a: f"round({a})",  # only in a domain: compared with a float, exactly
}
# A formula that is one of these applied to the inputs in order is that function itself.
_ARRAY_FUNCTIONS = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
    "neg": np.negative,
    **{name: getattr(np, name) for name in NUMPY_FUNCTIONS},
    "where": np.where,
}
_FLOAT_FUNCTIONS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "neg": operator.neg,
    "abs": abs,
    "power": math.pow,
    **{name: getattr(math, name) for name in MATH_FUNCTIONS},
}


class Code:
    """What rendered formulas need beyond their text: fresh names for temporaries, and the
    functions (``Elementwise`` ones) that the code calls by name."""

    def __init__(self, array: bool) -> None:
        self.array = array
        self.namespace: dict[str, object] = dict(ARRAY_NAMESPACE if array else FLOAT_NAMESPACE)
        self._count = 0
        self._names: dict[int, str] = {}

    def temporary(self) -> str:
        self._count += 1
        return f"t{self._count}"

    def function(self, function: Elementwise) -> str:
        """The name under which the code calls ``function``'s form."""
        form = function.array if self.array else function.scalar
        if form is None:
            raise NoFloatForm(function.name)
        name = self._names.get(id(form))
        if name is None:
            name = self._names[id(form)] = f"_{function.name}{len(self._names)}"
            self.namespace[name] = form
        return name


def render(
    outputs: Sequence[Expr], symbols: dict[int, str], code: Code
) -> tuple[list[str], list[str]]:
    """The statements (temporaries) and the expressions that compute ``outputs``.

    ``symbols`` names the input symbols' code (by id). A node whose code would appear more
    than once, because the formula uses it twice or because its float form repeats an
    operand (``a * a`` for a square), becomes a temporary."""
    uses: Counter[int] = Counter()
    for output in outputs:
        _count_uses(output, code.array, uses)
    statements: list[str] = []
    done: dict[int, str] = {}
    texts = [_text(output, symbols, code, uses, done, statements) for output in outputs]
    return statements, texts


def _repeats(e: Expr, array: bool) -> int:
    """How often the code of ``e`` names each operand: more than once for float forms
    that repeat one."""
    if array or e.kind in _OPERATORS or e.kind in ("neg", "where", "call"):
        return 1
    return {"square": 2, "maximum": 3, "minimum": 3, "sign": 4}.get(e.kind, 1)


def _count_uses(e: Expr, array: bool, uses: Counter) -> None:
    # Formulas are a handful of nodes deep: recursion over them is bounded by the plugin's
    # source, not by any graph a client sends.
    uses[id(e)] += 1
    if uses[id(e)] > 1:
        return
    repeats = _repeats(e, array)
    for operand in e.operands:
        if isinstance(operand, Expr):
            for _ in range(repeats):
                _count_uses(operand, array, uses)


def _text(e: Expr, symbols, code: Code, uses: Counter, done: dict, statements: list) -> str:
    if e.kind == "symbol":
        return symbols[id(e)]
    if e.kind == "const":
        value = e.operands[0]
        return f"({value!r})" if value < 0 or math.copysign(1.0, value) < 0 else repr(value)
    if id(e) in done:
        return done[id(e)]
    operands = [
        _text(o, symbols, code, uses, done, statements) if isinstance(o, Expr) else o
        for o in e.operands
    ]
    if e.kind in _OPERATORS:
        text = f"({operands[0]} {e.kind} {operands[1]})"
    elif e.kind == "neg":
        text = f"(-{operands[0]})"
    elif e.kind == "call":
        text = f"{code.function(operands[0])}({', '.join(operands[1:])})"
    elif code.array:
        text = f"np.{e.kind}({', '.join(operands)})"
    elif e.kind in MATH_FUNCTIONS:
        text = f"math.{e.kind}({operands[0]})"
    else:
        form = _FLOAT_CODE[e.kind]
        if form is None:
            raise NoFloatForm(e.kind)
        text = form(*operands)
    if uses[id(e)] > 1:
        name = code.temporary()
        statements.append(f"{name} = {text}")
        text = name
    done[id(e)] = text
    return text


def _symbols(names: Sequence[str]) -> list[Expr]:
    return [Expr("symbol", name) for name in names]


def _outputs(result: object, what: str, count: int | None) -> list[Expr | float]:
    items = list(result) if isinstance(result, tuple | list) else [result]
    if count is not None and len(items) != count:
        raise ValueError(f"{what} gave {len(items)} result(s), expected {count}")
    return items


@dataclass(frozen=True)
class Traced:
    """An op's formulas traced for one input count: the symbols and the expressions."""

    xs: list[Expr]
    g: Expr
    y: Expr
    value: Expr
    grads: list[Expr]


@dataclass(frozen=True)
class Formulas:
    """An op's formulas: ``value(m, *xs)``, ``grads(m, g, y, *xs)`` (one upstream gradient
    times local derivative per input) and, if given, ``second(m, y, *xs)`` (as
    ``Op.second``); ``floats`` says which float forms the op has ("both", "forward" or
    "none")."""

    value: Callable[..., object]
    grads: Callable[..., Sequence[object]]
    second: Callable[..., Sequence[object]] | None = None
    floats: str = "both"
    _traced: dict[int, Traced] = field(default_factory=dict, compare=False, repr=False)

    def traced(self, n_inputs: int) -> Traced:
        """The formulas traced for ``n_inputs`` inputs (a fixed-arity op's: cached)."""
        traced = self._traced.get(n_inputs)
        if traced is None:
            xs = _symbols([f"x{i}" for i in range(n_inputs)])
            g, y = _symbols(["g", "y"])
            value = as_expr(self.value(EMIT, *xs))
            grads = [as_expr(d) for d in _outputs(self.grads(EMIT, g, y, *xs), "grads", n_inputs)]
            traced = Traced(xs, g, y, value, grads)
            self._traced[n_inputs] = traced
        return traced

    def emit_forward(self, xs: Sequence[str], code: Code) -> tuple[list[str], str]:
        """Float code for the value, the inputs' values named by ``xs``: the statements
        before it and the expression."""
        traced = self.traced(len(xs))
        statements, (text,) = render([traced.value], _names(traced, xs), code)
        return statements, text

    def emit_backward(
        self, g: str, y: str, xs: Sequence[str], code: Code
    ) -> tuple[list[str], list[str]]:
        """Float code for the gradient of each input: the statements and the expressions."""
        traced = self.traced(len(xs))
        names = _names(traced, xs) | {id(traced.g): g, id(traced.y): y}
        return render(traced.grads, names, code)


def emit_condition(
    condition: Callable[..., object], xs: Sequence[str], code: Code
) -> tuple[list[str], str] | None:
    """Float code for ``condition`` (an op's domain: a function of input arrays giving a
    boolean array) of the inputs named ``xs``, when it is written with operators, ``&``,
    ``|`` and ``np.round`` alone: traced as formulas are, its statements and expression.
    None when it is written otherwise (it raises, or gives something other than an
    expression, given expressions)."""
    symbols = _symbols([f"x{i}" for i in range(len(xs))])
    try:
        traced = condition(*symbols)
        if not isinstance(traced, Expr):
            return None
        names = {id(symbol): name for symbol, name in zip(symbols, xs, strict=True)}
        statements, (text,) = render([traced], names, code)
    except Exception:  # a condition that does not trace runs on arrays
        return None
    return statements, text


def _names(traced: Traced, xs: Sequence[str]) -> dict[int, str]:
    return {id(symbol): name for symbol, name in zip(traced.xs, xs, strict=True)}


def formula_op(
    name: str,
    arity: int | None,
    *,
    value: Callable[..., object],
    grads: Callable[..., Sequence[object]],
    second: Callable[..., Sequence[object]] | None = None,
    domain: Domain | None = None,
    floats: str = "both",
    doc: str = "",
) -> Op:
    """An ``Op`` from formulas (see the module's docstring).

    ``second(m, y, *xs)``, if given, returns the second derivatives as ``Op.second`` does
    (a formula may call the op's own ``grads`` with another upstream gradient, as tanh's
    ``-2 y / cosh(x)^2`` is its first derivative times ``-2 y``); without it, an op of fixed
    arity gets them derived from ``grads`` (``gradserve.ops.derivatives``), unless its
    formulas call an ``Elementwise`` function, whose derivative is not known. ``floats``:
    "both" gives the op a scalar forward and backward rendered from the formulas, "forward" only the
    forward (where the float backward would round too differently from the array one),
    "none" neither; a formula that calls a function without a float form has none either.
    """
    if floats not in ("both", "forward", "none"):
        raise ValueError(f"floats must be 'both', 'forward' or 'none', got {floats!r}")
    formulas = Formulas(value, grads, second, floats)
    if arity is None:
        forward, backward = _variadic_arrays(formulas)
        second_array = None if second is None else _variadic_second(second)
    else:
        forward, backward, second_array = _arrays(formulas, arity)
    scalar, scalar_backward = _floats(formulas, arity, floats)
    return Op(
        name,
        arity,
        forward=forward,
        backward=backward,
        doc=doc,
        domain=domain,
        scalar=scalar,
        scalar_backward=scalar_backward,
        second=second_array,
        formulas=formulas,
    )


def _compiled(name: str, parameters: Sequence[str], statements: list[str], result: str, code):
    source = "\n".join(
        [f"def {name}({', '.join(parameters)}):", *[f" {s}" for s in statements], f" {result}"]
    )
    namespace = dict(code.namespace)
    exec(compile(source, f"<formula {name}>", "exec"), namespace)
    return namespace[name]


def _simple_function(value: Expr, xs: list[Expr], functions: dict) -> Callable | None:
    """The library function that the value formula is, if it is one applied to the inputs
    in order (``a + b`` is ``np.add``): called directly, with no Python frame between."""
    operands = value.operands
    if len(operands) == len(xs) and all(o is x for o, x in zip(operands, xs, strict=True)):
        return functions.get(value.kind)
    return None


def _arrays(formulas: Formulas, arity: int):
    """forward, backward and second as NumPy functions compiled from the formulas."""
    traced = formulas.traced(arity)
    xs = [f"x{i}" for i in range(arity)]
    names = _names(traced, xs) | {id(traced.g): "g", id(traced.y): "y"}
    code = Code(array=True)
    forward = _simple_function(traced.value, traced.xs, _ARRAY_FUNCTIONS)
    if forward is None:
        statements, (text,) = render([traced.value], names, code)
        forward = _compiled("forward", xs, statements, f"return {text}", code)
    statements, texts = render(traced.grads, names, code)
    texts = [_shaped(t, d, "g") for t, d in zip(texts, traced.grads, strict=True)]
    backward = _compiled("backward", ["g", "y", *xs], statements, _returns(texts), code)
    if formulas.second is not None:
        pairs = _outputs(formulas.second(EMIT, traced.y, *traced.xs), "second", None)
        pairs = [as_expr(h) for h in pairs]
    else:
        try:
            pairs = second_of(formulas.grads, traced.y, traced.xs)
        except NotDerivable:
            return forward, backward, None
        if all(h.kind == "const" and h.operands[0] == 0.0 for h in pairs):
            pairs = []  # linear in its inputs: () as Op.second allows
    statements, texts = render(pairs, names, code)
    texts = [_shaped(t, h, "y") for t, h in zip(texts, pairs, strict=True)]
    return forward, backward, _compiled("second", ["y", *xs], statements, _returns(texts), code)


def _shaped(text: str, e: Expr, like: str) -> str:
    """A constant result as an array shaped as ``like`` (the engine wants one per node)."""
    return f"np.full_like({like}, {text})" if e.kind == "const" else text


def _returns(texts: list[str]) -> str:
    return f"return ({', '.join(texts)}{',' if len(texts) == 1 else ''})"


def _variadic_arrays(formulas: Formulas):
    """A variadic op's array functions: its formulas run on ``ARRAY`` at each call (their
    input count is known only then, up to millions)."""

    def forward(*xs):
        return formulas.value(ARRAY, *xs)

    def backward(g, y, *xs):
        return tuple(
            np.full_like(g, d) if isinstance(d, float) else d
            for d in formulas.grads(ARRAY, g, y, *xs)
        )

    return forward, backward


def _variadic_floats(formulas: Formulas, floats: str):
    """A variadic op's float functions: its formulas run on ``FLOAT`` at each call."""

    def scalar(*xs):
        return formulas.value(FLOAT, *xs)

    def scalar_backward(g, y, *xs):
        return tuple(formulas.grads(FLOAT, g, y, *xs))

    return scalar, scalar_backward if floats == "both" else None


def _variadic_second(second: Callable):
    def second_array(y, *xs):
        return tuple(
            np.full_like(y, h) if isinstance(h, float) else h for h in second(ARRAY, y, *xs)
        )

    return second_array


def _floats(formulas: Formulas, arity: int | None, floats: str):
    """scalar and scalar_backward rendered from the formulas (None where there are none)."""
    if floats == "none":
        return None, None
    if arity is None:
        return _variadic_floats(formulas, floats)
    try:
        return (
            _float_forward(formulas, arity),
            _float_backward(formulas, arity) if floats == "both" else None,
        )
    except NoFloatForm:
        return None, None


def _float_forward(formulas: Formulas, arity: int) -> Callable:
    traced = formulas.traced(arity)
    simple = _simple_function(traced.value, traced.xs, _FLOAT_FUNCTIONS)
    if simple is not None:
        return simple
    xs = [f"x{i}" for i in range(arity)]
    code = Code(array=False)
    statements, text = formulas.emit_forward(xs, code)
    return _compiled("scalar", xs, statements, f"return {text}", code)


def _float_backward(formulas: Formulas, arity: int) -> Callable:
    xs = [f"x{i}" for i in range(arity)]
    code = Code(array=False)
    statements, texts = formulas.emit_backward("g", "y", xs, code)
    return _compiled("scalar_backward", ["g", "y", *xs], statements, _returns(texts), code)
