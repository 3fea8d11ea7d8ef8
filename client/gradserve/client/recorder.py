"""Recording in Python: the fallback where the compiled core (``compiled_recorder.pyx``) is
not built.

``recording`` picks one of the two cores; both have the same names and behaviour, and the
SDK's tests run against each. A core has the hot part of a Value (its fields and the
operators that record a node) and of a tape (its columns, its leaves and its live op-node
Values); ``value.py`` and ``tape.py`` subclass them with everything else and ``bind`` the
subclasses, so that the operators make the SDK's own Values and tapes.

A tape holds one graph as two lists: per node an op code (``opcodes``: the op and its number
of inputs, 0 for a leaf), and the nodes' input ids back to back. A node's id is its
position, so ids are a topological order. Leaf Values (parameters, constants) belong to no
tape: each tape gives a leaf it reads a node id of its own, so a parameter can be read by one
tape per training step. Op-node Values point to their tape, and the tape refers back to them
only weakly (``live``), so a step's graph is freed as soon as the user drops its Values.
When an op reads Values of two tapes, the smaller tape is appended to the larger (its order
stays topological), so recording never copies a node more than O(log n) times.
"""

import itertools
import numbers
import operator
import threading
import weakref
from collections.abc import Callable

import numpy as np

from gradserve.client import opcodes
from gradserve.client.opcodes import (
    ABS,
    ADD,
    COS,
    DIV,
    EXP,
    LOG,
    MUL,
    NEG,
    POW,
    RELU,
    SIGMOID,
    SIN,
    SQRT,
    SUB,
    TANH,
)

COMPILED = False
CONSTANT = -2  # the _id of a leaf Value the SDK made from a plain number
LEAF_ID = -1  # the _id of any other leaf Value


_classes: dict[str, type] = {}  # "value", "tape": the SDK's subclasses (bind)
_hooks: dict[str, Callable] = {}  # "evaluate_pending": (tape) -> None (bind)


def bind(value_class: type, tape_class: type, evaluate_pending: Callable) -> None:
    """The classes whose instances recording makes: ``Value`` and ``Tape``; and what
    reading ``.data`` of a pending Value calls with its tape."""
    _classes["value"], _classes["tape"] = value_class, tape_class
    _hooks["evaluate_pending"] = evaluate_pending


class ValueCore:
    """A Value's fields and the operators that record a node."""

    __slots__ = ("__weakref__", "_data", "_id", "_tape", "grad", "label")

    def __init__(self, data: float, label: str = "") -> None:
        if type(data) is not float and not isinstance(data, numbers.Real):
            raise TypeError(f"Value data must be a real number, got {type(data).__name__}")
        self._data = float(data)
        self.grad = 0.0
        self.label = label
        self._tape = None  # leaves belong to no tape
        self._id = LEAF_ID

    @property
    def data(self) -> float | None:
        """The value: a leaf's own; an op node's from the last evaluation, evaluating what is
        pending on its tape on the default server when there is none yet
        (``NoServerConfigured`` without a default server)."""
        if self._data is None and self._tape is not None:
            _hooks["evaluate_pending"](self._tape)
        return self._data

    @data.setter
    def data(self, data: float | None) -> None:
        self._data = data

    # Binary operators: a plain number on either side becomes a constant leaf.
    def __add__(self, other):
        return binary(ADD, self, other)

    def __radd__(self, other):
        return binary(ADD, other, self)

    def __sub__(self, other):
        return binary(SUB, self, other)

    def __rsub__(self, other):
        return binary(SUB, other, self)

    def __mul__(self, other):
        return binary(MUL, self, other)

    def __rmul__(self, other):
        return binary(MUL, other, self)

    def __truediv__(self, other):
        return binary(DIV, self, other)

    def __rtruediv__(self, other):
        return binary(DIV, other, self)

    def __pow__(self, other):
        return binary(POW, self, other)

    def __rpow__(self, other):
        return binary(POW, other, self)

    def __neg__(self):
        return _unary(NEG, self)

    def __abs__(self):
        return _unary(ABS, self)

    def tanh(self):
        return _unary(TANH, self)

    def relu(self):
        return _unary(RELU, self)

    def exp(self):
        return _unary(EXP, self)

    def log(self):
        return _unary(LOG, self)

    def sigmoid(self):
        return _unary(SIGMOID, self)

    def sqrt(self):
        return _unary(SQRT, self)

    def abs(self):
        return _unary(ABS, self)

    def sin(self):
        return _unary(SIN, self)

    def cos(self):
        return _unary(COS, self)

    def neg(self):
        return _unary(NEG, self)


def as_value(x) -> ValueCore | None:
    """``x`` if it is a Value, a constant leaf if it is a plain number, else None."""
    if isinstance(x, ValueCore):
        return x
    return _constant(x)


def _constant(x) -> ValueCore | None:
    """A leaf Value for the plain number ``x`` (None for anything else)."""
    if type(x) is not float and type(x) is not int and not isinstance(x, numbers.Real):
        return None
    value_class = _classes["value"]
    constant = value_class.__new__(value_class)
    constant._data = float(x)
    constant.grad = 0.0
    constant.label = ""
    constant._tape = None
    constant._id = CONSTANT
    return constant


# Recording is the SDK's hot path (one call per node built): the one- and two-input cases
# are spelled out, without the general case's list and comprehension, and the operators'
# op codes are constants.


def binary(code: int, a, b):
    """A node of the two-input op ``code`` (NotImplemented unless both are Values or
    numbers)."""
    if not isinstance(a, ValueCore) and (a := _constant(a)) is None:
        return NotImplemented
    if not isinstance(b, ValueCore) and (b := _constant(b)) is None:
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


def _unary(code: int, a: ValueCore) -> ValueCore:
    tape = a._tape
    if tape is None:
        tape = current_tape()
        first = tape.leaf_id(a)
    else:
        first = a._id
    tape.codes.append(code)
    tape.input_ids.append(first)
    return _op_node(tape)


def record(code: int, inputs: list) -> ValueCore:
    """A node of op ``code`` reading the Values ``inputs`` (any number of them)."""
    tape = tape_of(inputs)
    ids = [v._id if v._tape is not None else tape.leaf_id(v) for v in inputs]
    tape.codes.append(code)
    tape.input_ids.extend(ids)
    return _op_node(tape)


def _op_node(tape: "TapeCore") -> ValueCore:
    """The Value of the node just recorded on ``tape``."""
    value_class = _classes["value"]
    out = value_class.__new__(value_class)
    out._data = None
    out.grad = 0.0
    out.label = ""
    out._tape = tape
    out._id = len(tape.codes) - 1
    tape.live.add(weakref.ref(out, tape.forget))  # TapeCore._adopt, inlined
    return out


def set_results(values: list, rows: np.ndarray, data: np.ndarray, grads: np.ndarray) -> None:
    """Set ``.data`` and ``.grad`` of each Value of ``values`` from its row of the float64
    arrays ``data`` and ``grads``: the row ``rows[i]`` (int64) for ``values[i]``."""
    for value, x, g in zip(values, data[rows].tolist(), grads[rows].tolist(), strict=True):
        value._data, value.grad = x, g


def in_order(nodes: np.ndarray, count: int) -> bool:
    """Whether ``nodes`` (int64) is 0, 1, ..., ``count`` - 1."""
    return len(nodes) == count and bool((nodes == np.arange(count)).all())


def any_label(values: list) -> bool:
    """Whether any Value of ``values`` has a label (one that is not empty)."""
    return any(map(_label, values))


def leaf_data(values: list, count: int) -> np.ndarray:
    """The ``.data`` of the first ``count`` Values of ``values`` (leaves), as float64; a
    TypeError for one that is no real number."""
    data = list(map(_data, values[:count]))
    # The exact-type test first, in bulk: an ABC isinstance check costs 2 us a leaf.
    if set(map(type, data)) - {float}:
        for x in data:
            if type(x) is not float and not isinstance(x, numbers.Real):
                raise TypeError(f"a leaf's data must be a real number, got {x!r}")
    return np.array(data, dtype=np.float64)


_data = operator.attrgetter("_data")
_label = operator.attrgetter("label")


class TapeCore:
    """A tape's columns, its leaves and its op-node Values still alive."""

    __slots__ = (
        "__weakref__",
        "_by_node",
        "codes",
        "forget",
        "input_ids",
        "leaf_ids",
        "live",
        "sent",
    )

    def __init__(self) -> None:
        self.codes: list[int] = []  # per node: its op code, opcodes.LEAF for a leaf
        self.input_ids: list[int] = []  # each node's inputs, node after node
        # Each leaf Value -> its node id, in node order. A leaf Value does not point back,
        # so no cycle. (A constant is a new Value each time a number is used.)
        self.leaf_ids: dict = {}
        # Weak references to the op-node Values still alive. Most op-node Values are
        # temporaries (``act + w * x`` drops the product at once): each reference removes
        # itself from the set when its Value goes (``forget``, a call into C), rather than
        # staying in a per-node list where the garbage collector walked it again and again
        # (0.8 s of the 1.9 s it took to build a 812k-node MLP).
        self.live: set[weakref.ref] = set()
        self.forget = self.live.discard
        self.sent = False  # once sent, no new graph starts on this tape (see current_tape)
        self._by_node: tuple[int, dict] | None = None  # node_value's index, made when asked

    def __len__(self) -> int:
        return len(self.codes)

    def leaf_id(self, value) -> int:
        """The node id of a leaf Value on this tape, adding the leaf on first use."""
        codes = self.codes
        node = self.leaf_ids.setdefault(value, len(codes))
        if node == len(codes):
            codes.append(opcodes.LEAF)
        return node

    def code(self, node: int) -> int:
        return self.codes[node]

    def codes_array(self, count: int | None = None) -> np.ndarray:
        """The op codes of the first ``count`` nodes (all by default), as int64."""
        count = len(self.codes) if count is None else count
        return np.fromiter(self.codes, dtype=np.int64, count=count)

    def input_ids_array(self, count: int | None = None) -> np.ndarray:
        """The first ``count`` entries of the input ids (all by default), as int64."""
        count = len(self.input_ids) if count is None else count
        return np.fromiter(self.input_ids, dtype=np.int64, count=count)

    def columns(self) -> tuple[list[int], list[int]]:
        """A copy of the tape's columns (op codes, input ids), for ``has_columns``."""
        return self.codes.copy(), self.input_ids.copy()

    def has_columns(self, columns: tuple[list[int], list[int]]) -> bool:
        """Whether this tape's columns are ``columns`` (``columns()`` of a tape): the same
        nodes, ops and inputs."""
        return self.codes == columns[0] and self.input_ids == columns[1]

    def live_values(self) -> list:
        """The op-node Values still alive."""
        values = (ref() for ref in list(self.live))  # a copy: a Value may go meanwhile
        return [value for value in values if value is not None]

    def node_value(self, node: int) -> tuple[ValueCore, bool]:
        """The Value of op node ``node``: the one alive, else one made now (with no data
        yet; the tape refers to it as to any other); and whether it was made now."""
        if self._by_node is None or self._by_node[0] != len(self.codes):
            by_node = {value._id: weakref.ref(value) for value in self.live_values()}
            self._by_node = (len(self.codes), by_node)
        ref = self._by_node[1].get(node)
        value = ref() if ref is not None else None
        if value is not None:
            return value, False
        value_class = _classes["value"]
        value = value_class.__new__(value_class)
        value._data, value.grad, value.label = None, 0.0, ""
        value._tape, value._id = self, node
        self._adopt(value)
        self._by_node[1][node] = weakref.ref(value)
        return value, True

    def held(self, kept: np.ndarray) -> tuple[np.ndarray, list, int]:
        """The positions in ``kept`` (tape ids, ascending) of the nodes whose Values the
        tape can reach, those Values, and how many of them are leaves: every leaf, first
        and in node order, then the op-node Values still alive."""
        ops = self.live_values()
        tape_ids = np.concatenate(
            [
                np.fromiter(self.leaf_ids.values(), dtype=np.int64, count=len(self.leaf_ids)),
                np.array([value._id for value in ops], dtype=np.int64),
            ]
        )
        values = [*self.leaf_ids, *ops]
        positions = np.searchsorted(kept, tape_ids)
        inside = positions < len(kept)
        inside[inside] = kept[positions[inside]] == tape_ids[inside]
        if not inside.all():
            values = list(itertools.compress(values, inside.tolist()))
        return positions[inside], values, int(inside[: len(self.leaf_ids)].sum())

    def _adopt(self, value) -> None:
        """Refer weakly to the op-node Value ``value``, until it goes."""
        self.live.add(weakref.ref(value, self.forget))

    def absorb(self, other: "TapeCore") -> None:
        """Append ``other``'s nodes after this tape's and move its Values here."""
        counts = opcodes.input_counts(other.codes_array()).tolist()
        new_ids = [0] * len(other)
        leaves = {node: value for value, node in other.leaf_ids.items()}
        start = 0
        for node, (code, count) in enumerate(zip(other.codes, counts, strict=True)):
            if code == opcodes.LEAF:
                new_ids[node] = self.leaf_id(leaves[node])
            else:
                new_ids[node] = len(self.codes)
                self.codes.append(code)
                self.input_ids.extend(new_ids[i] for i in other.input_ids[start : start + count])
            start += count
        for value in other.live_values():
            if value._tape is other:
                value._tape, value._id = self, new_ids[value._id]
                self._adopt(value)
        other.sent = True  # no Value refers to it now; it is freed


_local = threading.local()


def current_tape() -> TapeCore:
    """The tape a new graph (an op on leaves only) starts on, per thread.

    A graph that was sent is finished: the next op on leaves only starts a new tape, so a
    training loop records each step on a tape of its own and memory does not grow.
    """
    ref = getattr(_local, "tape", None)
    tape = ref() if ref is not None else None
    if tape is None or tape.sent:
        tape = _classes["tape"]()
        _local.tape = weakref.ref(tape)
    return tape


def tape_of(values) -> TapeCore:
    """One tape holding every Value in ``values``, merging tapes when they differ."""
    tape = None
    for value in values:
        other = value._tape
        if other is None or other is tape:
            continue
        if tape is None:
            tape = other
        elif len(other) > len(tape):
            other.absorb(tape)
            tape = other
        else:
            tape.absorb(other)
    return tape if tape is not None else current_tape()
