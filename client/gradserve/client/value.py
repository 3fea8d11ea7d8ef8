"""``Value``: a micrograd-style scalar whose graph is recorded here and differentiated remotely.

Operators only record a node (see ``tape``); nothing is computed locally.
``loss.backward(client)`` (or ``loss.backward()`` on the default server, see ``default``)
fills ``.data`` and ``.grad`` of every Value the loss depends on. Reading ``.data`` of an op
node not evaluated yet evaluates what is pending on its tape, in one call to the default
server (without one it raises ``NoServerConfigured``); like micrograd's, it then stays as it
is until a backward recomputes it.

Besides micrograd's operators, a Value has PyTorch's names for the standard ops (``x.sin()``,
``x.sqrt()``, ``x.maximum(y)``, ``x.add(y)`` ...), ``abs(x)``, ``float(x)`` and ``x.item()``.

``_prev`` and ``_op`` show the graph as micrograd's Value does, for the lecture's ``trace``
and ``draw_dot``: a node's inputs as Value objects (one object per node, made on demand for
intermediates the program dropped) and its op's symbol.
"""

import numbers
import weakref

from gradserve.client import opcodes, remote
from gradserve.client.errors import GradserveError
from gradserve.client.tape import CONSTANT, Tape, current_tape, tape_of

ADD, SUB, MUL, DIV, POW = (opcodes.code(op, 2) for op in ("add", "sub", "mul", "div", "pow"))
NEG, TANH, RELU, EXP, LOG, SIGMOID = (
    opcodes.code(op, 1) for op in ("neg", "tanh", "relu", "exp", "log", "sigmoid")
)
SQRT, ABS, SIN, COS = (opcodes.code(op, 1) for op in ("sqrt", "abs", "sin", "cos"))
MAX, MIN = (opcodes.code(op, 2) for op in ("max", "min"))


class Value:
    """A scalar in a computation graph: a leaf when built as ``Value(data)``."""

    __slots__ = ("__weakref__", "_data", "_id", "_tape", "grad", "label")

    def __init__(self, data: float, label: str = "") -> None:
        if type(data) is not float and not isinstance(data, numbers.Real):
            raise TypeError(f"Value data must be a real number, got {type(data).__name__}")
        self._data = float(data)
        self.grad = 0.0
        self.label = label
        self._tape = None  # leaves belong to no tape
        self._id = -1

    @property
    def data(self) -> float | None:
        """The value: a leaf's own; an op node's from the last evaluation, evaluating what is
        pending on its tape on the default server when there is none yet
        (``NoServerConfigured`` without a default server)."""
        if self._data is None and self._tape is not None:
            remote.evaluate_pending(self._tape)  # pending.evaluate
        return self._data

    @data.setter
    def data(self, data: float | None) -> None:
        self._data = data

    @property
    def _prev(self) -> tuple["Value", ...]:
        """The Values this one was computed from, in order (empty for a leaf): the objects
        the program built, or one made now (and kept while used) for a dropped one."""
        return () if self._tape is None else self._tape.inputs_of(self._id, _made_for)

    @property
    def _op(self) -> str:
        """'+' for add, '*' for mul, the op's name for any other op, '' for a leaf."""
        return "" if self._tape is None else opcodes.symbol(self._tape.codes[self._id])

    def __repr__(self) -> str:
        label = f", label={self.label!r}" if self.label else ""
        data = self.data if self._tape is None or self._data is not None else self._shown_data()
        return f"Value(data={data}, grad={self.grad}{label})"

    def _shown_data(self) -> str | float:
        """An op node's data for its repr: evaluated if a default server is set, else
        ``<pending>`` (with the reason when the evaluation failed)."""
        if remote.configured_client() is None:
            return "<pending>"
        try:
            return self.data
        except GradserveError as error:  # a repr does not raise: the error shows in it
            return f"<pending: {error}>"

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        """In Jupyter a Value shows as its drawing (``draw_dot``) where Graphviz can render
        it; its text form is always its repr, with or without Graphviz."""
        text = {"text/plain": repr(self)}
        try:
            from gradserve.client.draw import draw_dot
        except ImportError:  # no graphviz package: the repr alone
            return text
        return {**draw_dot(self)._repr_mimebundle_(include, exclude, **kwargs), **text}

    def apply(self, op: str, *others: "Value | float") -> "Value":
        """A node applying the server's op ``op`` to this Value and ``others``, in order.

        Any op the server lists works, plugin ops included; the server checks the name and
        the number of inputs when the graph is evaluated.
        """
        inputs = [self]
        for other in others:
            value = _as_value(other)
            if value is None:
                raise TypeError(f"apply({op!r}): inputs must be Values or numbers, got {other!r}")
            inputs.append(value)
        return _record(op, inputs)

    def backward(self, client=None, *, allow_non_finite: bool = False):
        """Evaluate this Value's graph and fill ``.data`` and ``.grad`` of every Value it
        depends on (gradients of this Value, fresh on each call), on ``client``'s server or,
        without one, on the default server (``gradserve.client.use`` or ``GRADSERVE_TARGET``).

        With an ``AsyncClient`` it returns a coroutine: ``await loss.backward(client)``.
        ``allow_non_finite`` lets NaN and infinities through instead of failing the call.
        """
        if client is None:
            client = remote.default_client()
        return client.backward(self, allow_non_finite=allow_non_finite)

    # Binary operators: a plain number on either side becomes a constant leaf.
    def __add__(self, other):
        return _binary(ADD, self, other)

    def __radd__(self, other):
        return _binary(ADD, other, self)

    def __sub__(self, other):
        return _binary(SUB, self, other)

    def __rsub__(self, other):
        return _binary(SUB, other, self)

    def __mul__(self, other):
        return _binary(MUL, self, other)

    def __rmul__(self, other):
        return _binary(MUL, other, self)

    def __truediv__(self, other):
        return _binary(DIV, self, other)

    def __rtruediv__(self, other):
        return _binary(DIV, other, self)

    def __pow__(self, other):
        return _binary(POW, self, other)

    def __rpow__(self, other):
        return _binary(POW, other, self)

    def __neg__(self):
        return _unary(NEG, self)

    def tanh(self) -> "Value":
        return _unary(TANH, self)

    def relu(self) -> "Value":
        return _unary(RELU, self)

    def exp(self) -> "Value":
        return _unary(EXP, self)

    def log(self) -> "Value":
        return _unary(LOG, self)

    def sigmoid(self) -> "Value":
        return _unary(SIGMOID, self)

    # PyTorch's names (torch.Tensor's methods) for the standard ops, and Python's protocols.
    def sqrt(self) -> "Value":
        return _unary(SQRT, self)

    def abs(self) -> "Value":
        return _unary(ABS, self)

    def sin(self) -> "Value":
        return _unary(SIN, self)

    def cos(self) -> "Value":
        return _unary(COS, self)

    def neg(self) -> "Value":
        return _unary(NEG, self)

    def add(self, other) -> "Value":
        return _checked(_binary(ADD, self, other), other)

    def sub(self, other) -> "Value":
        return _checked(_binary(SUB, self, other), other)

    def mul(self, other) -> "Value":
        return _checked(_binary(MUL, self, other), other)

    def div(self, other) -> "Value":
        return _checked(_binary(DIV, self, other), other)

    def pow(self, exponent) -> "Value":
        return _checked(_binary(POW, self, exponent), exponent)

    def maximum(self, other) -> "Value":
        """The larger of the two (the op ``max``; its gradient goes to the larger input)."""
        return _checked(_binary(MAX, self, other), other)

    def minimum(self, other) -> "Value":
        """The smaller of the two (the op ``min``)."""
        return _checked(_binary(MIN, self, other), other)

    def __abs__(self) -> "Value":
        return _unary(ABS, self)

    def item(self) -> float:
        """``.data`` as a Python float, as ``torch.Tensor.item()`` (evaluated if pending)."""
        return float(self.data)

    def __float__(self) -> float:
        return self.item()


def _checked(result, other):
    """``result`` of a method; a TypeError for an input that is no Value or number."""
    if result is NotImplemented:
        raise TypeError(f"expected a Value or a number, got {other!r}")
    return result


def _made_for(tape: Tape, node: int) -> Value:
    """A Value for the op node ``node`` of ``tape``, whose own the program dropped, with the
    results remembered for it (``Tape.inputs_of``)."""
    value = Value.__new__(Value)
    value._data, value.grad = tape.result(node) or (None, 0.0)
    value.label = ""
    value._tape, value._id = tape, node
    tape.adopt(value)
    return value


def _as_value(x) -> Value | None:
    if isinstance(x, Value):
        return x
    return _constant(x)


def _constant(x) -> Value | None:
    """A leaf Value for the plain number ``x`` (None for anything else)."""
    if type(x) is not float and type(x) is not int and not isinstance(x, numbers.Real):
        return None
    constant = Value.__new__(Value)
    constant._data = float(x)
    constant.grad = 0.0
    constant.label = ""
    constant._tape = None
    constant._id = CONSTANT
    return constant


# Recording is the SDK's hot path (one call per node built): the one- and two-input cases
# are spelled out, without the general case's list and comprehension, and the operators'
# op codes are constants.


def _binary(code: int, a, b):
    if type(a) is not Value and (a := _constant(a)) is None:
        return NotImplemented
    if type(b) is not Value and (b := _constant(b)) is None:
        return NotImplemented
    tape = a._tape
    if tape is None:
        tape = b._tape if b._tape is not None else current_tape()
    elif b._tape is not tape and b._tape is not None:
        tape = tape_of((a, b))  # Values from two tapes
    first = a._id if a._tape is not None else tape.leaf_id(a)
    second = b._id if b._tape is not None else tape.leaf_id(b)
    tape.codes.append(code)
    inputs = tape.input_ids
    inputs.append(first)
    inputs.append(second)
    return _op_node(tape)


def _unary(code: int, a: Value) -> Value:
    tape = a._tape
    if tape is None:
        tape = current_tape()
        first = tape.leaf_id(a)
    else:
        first = a._id
    tape.codes.append(code)
    tape.input_ids.append(first)
    return _op_node(tape)


def _record(op: str, inputs: list[Value]) -> Value:
    """A node of any number of inputs (``Value.apply``)."""
    tape = tape_of(inputs)
    ids = [v._id if v._tape is not None else tape.leaf_id(v) for v in inputs]
    tape.codes.append(opcodes.code(op, len(ids)))
    tape.input_ids.extend(ids)
    return _op_node(tape)


def _op_node(tape: Tape) -> Value:
    """The Value of the node just recorded on ``tape``."""
    out = Value.__new__(Value)
    out._data = None
    out.grad = 0.0
    out.label = ""
    out._tape = tape
    out._id = len(tape.codes) - 1
    tape.live.add(weakref.ref(out, tape.forget))  # Tape.adopt, inlined
    return out
