"""``Value``: a micrograd-style scalar whose graph is recorded here and differentiated remotely.

Operators only record a node (see ``tape``); nothing is computed locally. ``.data`` of an op
node is None until the graph is evaluated: ``loss.backward(client)`` fills ``.data`` and
``.grad`` of every Value the loss depends on.
"""

import numbers
import weakref

from gradserve.client.tape import CONSTANT, tape_of


class Value:
    """A scalar in a computation graph: a leaf when built as ``Value(data)``."""

    __slots__ = ("__weakref__", "_id", "_tape", "data", "grad", "label")

    def __init__(self, data: float, label: str = "") -> None:
        if type(data) is not float and not isinstance(data, numbers.Real):
            raise TypeError(f"Value data must be a real number, got {type(data).__name__}")
        self.data = float(data)
        self.grad = 0.0
        self.label = label
        self._tape = None  # leaves belong to no tape
        self._id = -1

    def __repr__(self) -> str:
        label = f", label={self.label!r}" if self.label else ""
        return f"Value(data={self.data}, grad={self.grad}{label})"

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

    def backward(self, client):
        """Evaluate this Value's graph on ``client``'s server and fill ``.data`` and ``.grad``
        of every Value it depends on (gradients of this Value, fresh on each call).

        With an ``AsyncClient`` it returns a coroutine: ``await loss.backward(client)``.
        """
        return client.backward(self)

    # Binary operators: a plain number on either side becomes a constant leaf.
    def __add__(self, other):
        return _binary("add", self, other)

    def __radd__(self, other):
        return _binary("add", other, self)

    def __sub__(self, other):
        return _binary("sub", self, other)

    def __rsub__(self, other):
        return _binary("sub", other, self)

    def __mul__(self, other):
        return _binary("mul", self, other)

    def __rmul__(self, other):
        return _binary("mul", other, self)

    def __truediv__(self, other):
        return _binary("div", self, other)

    def __rtruediv__(self, other):
        return _binary("div", other, self)

    def __pow__(self, other):
        return _binary("pow", self, other)

    def __rpow__(self, other):
        return _binary("pow", other, self)

    def __neg__(self):
        return _unary("neg", self)

    def tanh(self) -> "Value":
        return _unary("tanh", self)

    def relu(self) -> "Value":
        return _unary("relu", self)

    def exp(self) -> "Value":
        return _unary("exp", self)

    def log(self) -> "Value":
        return _unary("log", self)

    def sigmoid(self) -> "Value":
        return _unary("sigmoid", self)


def _as_value(x) -> Value | None:
    if isinstance(x, Value):
        return x
    if type(x) is float or isinstance(x, numbers.Real):
        constant = Value(x)
        constant._id = CONSTANT
        return constant
    return None


# Recording is the SDK's hot path (one call per node built): the one- and two-input cases
# are spelled out, without the general case's list and comprehension; measured 1.99 -> 1.42
# us a node on an MLP-like build.


def _binary(op: str, a, b):
    if type(a) is not Value and (a := _as_value(a)) is None:
        return NotImplemented
    if type(b) is not Value and (b := _as_value(b)) is None:
        return NotImplemented
    tape = a._tape
    if tape is None or b._tape is not tape:
        tape = tape_of((a, b))  # leaves, or Values from two tapes
    first = a._id if a._tape is not None else tape.leaf_id(a)
    second = b._id if b._tape is not None else tape.leaf_id(b)
    return _node(tape, op, (first, second))


def _unary(op: str, a: Value) -> Value:
    tape = a._tape
    if tape is None:
        tape = tape_of((a,))
        return _node(tape, op, (tape.leaf_id(a),))
    return _node(tape, op, (a._id,))


def _record(op: str, inputs: list[Value]) -> Value:
    """A node of any number of inputs (``Value.apply``)."""
    tape = tape_of(inputs)
    ids = [v._id if v._tape is not None else tape.leaf_id(v) for v in inputs]
    return _node(tape, op, ids)


def _node(tape, op: str, ids) -> Value:
    """A new op-node Value on ``tape`` reading the node ids ``ids``."""
    out = Value.__new__(Value)
    out.data = None
    out.grad = 0.0
    out.label = ""
    out._tape = tape
    out._id = tape.add_node(op, ids, weakref.ref(out))
    return out
