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

from gradserve.client import opcodes, remote
from gradserve.client.errors import GradserveError
from gradserve.client.recording import core
from gradserve.client.tape import Tape


class Value(core.ValueCore):
    """A scalar in a computation graph: a leaf when built as ``Value(data)``.

    Its fields and the operators that record a node are the recording core's
    (``recording``); the rest is here.
    """

    __slots__ = ()

    # ``data`` is the core's (read in every training loop's update): reading it of an op
    # node not evaluated yet calls _evaluate_pending.

    @property
    def _prev(self) -> tuple["Value", ...]:
        """The Values this one was computed from, in order (empty for a leaf): the objects
        the program built, or one made now (and kept while used) for a dropped one."""
        return () if self._tape is None else self._tape.inputs_of(self._id)

    @property
    def _op(self) -> str:
        """'+' for add, '*' for mul, the op's name for any other op, '' for a leaf."""
        return "" if self._tape is None else opcodes.symbol(self._tape.code(self._id))

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
            value = core.as_value(other)
            if value is None:
                raise TypeError(f"apply({op!r}): inputs must be Values or numbers, got {other!r}")
            inputs.append(value)
        return core.record(opcodes.code(op, len(inputs)), inputs)

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

    # The operators, tanh, relu, exp, log, sigmoid, sqrt, abs, sin, cos and neg are the
    # core's; PyTorch's names (torch.Tensor's methods) for the binary ops
    # and Python's protocols follow.
    def add(self, other) -> "Value":
        return _checked(core.binary(opcodes.ADD, self, other), other)

    def sub(self, other) -> "Value":
        return _checked(core.binary(opcodes.SUB, self, other), other)

    def mul(self, other) -> "Value":
        return _checked(core.binary(opcodes.MUL, self, other), other)

    def div(self, other) -> "Value":
        return _checked(core.binary(opcodes.DIV, self, other), other)

    def pow(self, exponent) -> "Value":
        return _checked(core.binary(opcodes.POW, self, exponent), exponent)

    def maximum(self, other) -> "Value":
        """The larger of the two (the op ``max``; its gradient goes to the larger input)."""
        return _checked(core.binary(opcodes.MAX, self, other), other)

    def minimum(self, other) -> "Value":
        """The smaller of the two (the op ``min``)."""
        return _checked(core.binary(opcodes.MIN, self, other), other)

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


def _evaluate_pending(tape) -> None:
    remote.evaluate_pending(tape)  # pending.evaluate, once the client layer is imported


core.bind(Value, Tape, _evaluate_pending)
