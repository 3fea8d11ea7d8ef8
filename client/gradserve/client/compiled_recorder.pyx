# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: auto_pickle=False, c_api_binop_methods=True
"""Recording compiled: the same names and behaviour as ``recorder`` (read it first), with
a tape's columns in C arrays and no weak reference per op-node Value.

A tape keeps, per node, a borrowed pointer to its op-node Value while that Value lives (NULL
once it is gone): a Value clears its slot when it is freed, so the tape finds its live Values
without holding them, as ``recorder``'s weak references do, for 8 bytes a node and no object
per node. Recording a node is then appending an op code and input ids to C arrays and
allocating the Value, with no Python-level call in between.

``current_tape`` remembers the last thread's tape by pointer (the tape forgets itself when
freed), so that an op on two leaves finds its tape without the thread-local lookup.
"""

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsSsize_t
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcmp, memcpy

import atexit
import numbers
import threading
import weakref

import numpy as np

from gradserve.client import opcodes

cdef extern from "Python.h":
    unsigned long PyThread_get_thread_ident()
    void PyObject_GC_UnTrack(object)
    void PyType_Modified(PyTypeObject*)
    ctypedef struct PyNumberMethods:
        void* nb_add
        void* nb_subtract
        void* nb_multiply
        void* nb_true_divide
        void* nb_power
    ctypedef struct TypeWithNumbers "PyTypeObject":
        PyNumberMethods* tp_as_number

# The binary operators' slots (see _inherit_binary_slots): the dunder names, one per slot.
_BINARY_SLOTS = ("__add__", "__sub__", "__mul__", "__truediv__", "__pow__")

COMPILED = True
CONSTANT = -2  # the _id of a leaf Value the SDK made from a plain number
LEAF_ID = -1  # the _id of any other leaf Value

cdef int32_t LEAF = opcodes.LEAF
cdef int32_t ADD = opcodes.ADD, SUB = opcodes.SUB, MUL = opcodes.MUL, DIV = opcodes.DIV
cdef int32_t POW = opcodes.POW, NEG = opcodes.NEG, TANH = opcodes.TANH, RELU = opcodes.RELU
cdef int32_t EXP = opcodes.EXP, LOG = opcodes.LOG, SIGMOID = opcodes.SIGMOID
cdef int32_t SQRT = opcodes.SQRT, ABS = opcodes.ABS, SIN = opcodes.SIN, COS = opcodes.COS

# The SDK's subclasses (bind): their instances are what recording makes.
cdef object _value_class = None
cdef object _tape_class = None
cdef object _evaluate_pending = None  # (tape) -> None: fills its pending Values' data
cdef tuple _no_args = ()
cdef PyObject* _last_tape = NULL  # the tape current_tape gave last (borrowed; see the top)
cdef unsigned long _last_thread = 0  # the thread it gave it to


def bind(value_class, tape_class, evaluate_pending):
    """The classes whose instances recording makes: ``Value`` and ``Tape``; and what
    reading ``.data`` of a pending Value calls with its tape."""
    global _value_class, _tape_class, _evaluate_pending
    if not issubclass(value_class, ValueCore) or not issubclass(tape_class, TapeCore):
        raise TypeError("bind needs subclasses of ValueCore and TapeCore")
    _inherit_binary_slots(value_class)
    _value_class, _tape_class = value_class, tape_class
    _evaluate_pending = evaluate_pending


cdef _inherit_binary_slots(type value_class):
    """Give ``value_class`` ValueCore's own binary operator slots.

    Cython lists ``__add__`` and the others of ValueCore as methods, not as slot wrappers,
    so a Python subclass gets CPython's generic slot, which looks the method up by name and
    calls it on each operation: 10% of recording a node. The slot is the same C function
    the method calls, so nothing changes but the lookup. A subclass defining an operator
    itself keeps it."""
    for cls in value_class.__mro__:
        if cls is ValueCore:
            break
        if any(name in cls.__dict__ for name in _BINARY_SLOTS):
            return
    cdef PyNumberMethods* theirs = (<TypeWithNumbers*>value_class).tp_as_number
    cdef PyNumberMethods* ours = (<TypeWithNumbers*>ValueCore).tp_as_number
    theirs.nb_add = ours.nb_add
    theirs.nb_subtract = ours.nb_subtract
    theirs.nb_multiply = ours.nb_multiply
    theirs.nb_true_divide = ours.nb_true_divide
    theirs.nb_power = ours.nb_power
    PyType_Modified(<PyTypeObject*>value_class)


@atexit.register
def _unbind():
    """Let go of the classes at exit. Held here (in C, which the interpreter's shutdown does
    not clear) they would keep the SDK's modules, and so the default client and its open
    stream, alive until grpc's own modules are torn down."""
    global _value_class, _tape_class, _evaluate_pending
    _value_class = _tape_class = _evaluate_pending = None


cdef inline ValueCore _new_value():
    """A Value of the bound class with every field None (its tp_new, without __init__),
    not tracked by the garbage collector (see ValueCore)."""
    if _value_class is None:
        raise RuntimeError("the interpreter is exiting: no new Values")
    value = (<PyTypeObject*>_value_class).tp_new(_value_class, <PyObject*>_no_args, NULL)
    PyObject_GC_UnTrack(value)
    return <ValueCore>value


@cython.no_gc_clear  # __dealloc__ reads _tape: the garbage collector must not clear it first
cdef class ValueCore:
    """A Value's fields and the operators that record a node.

    Values are not tracked by the garbage collector: a Value refers to numbers, its label
    and its tape, and a tape to no op-node Value, so Values form no cycle (unless a label
    refers back to the graph, which then stays). Tracked, the collector walked every leaf
    again and again while a model's parameters were made: 400 ns of a leaf's 500.
    """

    cdef public object _data
    cdef public object grad
    cdef public object label
    cdef readonly TapeCore _tape
    cdef readonly Py_ssize_t _id
    cdef object __weakref__
    # A leaf's node on the tape that last added it (borrowed, reset when that tape goes):
    # most lookups of a leaf's node are then a comparison (TapeCore._leaf_id).
    cdef PyObject* _home
    cdef Py_ssize_t _home_node

    def __init__(self, data, label=""):
        if type(data) is not float and not isinstance(data, numbers.Real):
            raise TypeError(f"Value data must be a real number, got {type(data).__name__}")
        self._data = float(data)
        self.grad = 0.0
        self.label = label
        self._tape = None  # leaves belong to no tape
        self._id = LEAF_ID
        PyObject_GC_UnTrack(self)

    def __dealloc__(self):
        cdef TapeCore tape = self._tape
        if tape is not None and tape._live[self._id] == <PyObject*>self:
            tape._live[self._id] = NULL

    @property
    def data(self):
        """The value: a leaf's own; an op node's from the last evaluation, evaluating what is
        pending on its tape on the default server when there is none yet
        (``NoServerConfigured`` without a default server)."""
        if self._data is None and self._tape is not None and _evaluate_pending is not None:
            _evaluate_pending(self._tape)
        return self._data

    @data.setter
    def data(self, data):
        self._data = data

    # Binary operators: a plain number on either side becomes a constant leaf. (One C slot
    # per operator, called with the operands in order whichever side the Value is on:
    # c_api_binop_methods; bind gives Value, a Python subclass, the slot itself.)
    def __add__(a, b):
        return _binary(ADD, a, b)

    def __sub__(a, b):
        return _binary(SUB, a, b)

    def __mul__(a, b):
        return _binary(MUL, a, b)

    def __truediv__(a, b):
        return _binary(DIV, a, b)

    def __pow__(a, b, modulo):
        return _binary(POW, a, b)

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


def as_value(x):
    """``x`` if it is a Value, a constant leaf if it is a plain number, else None."""
    return _operand(x)


cdef inline object _operand(object x):
    if isinstance(x, ValueCore):
        return x
    return _constant(x)


cdef object _constant(object x):
    """A leaf Value for the plain number ``x`` (None for anything else)."""
    if type(x) is not float and type(x) is not int and not isinstance(x, numbers.Real):
        return None
    cdef ValueCore constant = _new_value()
    constant._data = float(x)
    constant.grad = 0.0
    constant.label = ""
    constant._id = CONSTANT
    return constant


def binary(int32_t code, a, b):
    """A node of the two-input op ``code`` (NotImplemented unless both are Values or
    numbers)."""
    return _binary(code, a, b)


cdef object _binary(int32_t code, object a, object b):
    cdef ValueCore x, y
    cdef TapeCore tape
    cdef int64_t first, second
    a = _operand(a)
    if a is None:
        return NotImplemented
    b = _operand(b)
    if b is None:
        return NotImplemented
    x, y = <ValueCore>a, <ValueCore>b
    tape = x._tape
    if tape is None:
        tape = y._tape if y._tape is not None else current_tape()
    elif y._tape is not tape and y._tape is not None:
        tape = tape_of((x, y))  # Values from two tapes
    first = x._id if x._tape is not None else tape._leaf_id(x)
    second = y._id if y._tape is not None else tape._leaf_id(y)
    tape._append_input(first)
    tape._append_input(second)
    return tape._op_node(code)


cdef object _unary(int32_t code, ValueCore a):
    cdef TapeCore tape = a._tape
    cdef int64_t first
    if tape is None:
        tape = current_tape()
        first = tape._leaf_id(a)
    else:
        first = a._id
    tape._append_input(first)
    return tape._op_node(code)


def record(int32_t code, inputs):
    """A node of op ``code`` reading the Values ``inputs`` (any number of them)."""
    cdef TapeCore tape = tape_of(inputs)
    ids = [v._id if v._tape is not None else tape._leaf_id(v) for v in inputs]
    for i in ids:
        tape._append_input(i)
    return tape._op_node(code)


def set_results(list values, rows, data, grads):
    """Set ``.data`` and ``.grad`` of each Value of ``values`` from its row of the float64
    arrays ``data`` and ``grads``: the row ``rows[i]`` (int64) for ``values[i]``."""
    cdef const int64_t[::1] at = rows
    cdef const double[::1] x = data
    cdef const double[::1] g = grads
    cdef Py_ssize_t i, n = len(values), count = min(x.shape[0], g.shape[0])
    cdef int64_t row
    if at.shape[0] != n:
        raise ValueError(f"{n} Values and {at.shape[0]} rows")
    cdef ValueCore value
    for i in range(n):
        row = at[i]
        if not 0 <= row < count:
            raise IndexError(f"row {row} of {x.shape[0]} data and {g.shape[0]} gradients")
        value = <ValueCore>values[i]
        value._data = x[row]
        value.grad = g[row]


def in_order(nodes, Py_ssize_t count):
    """Whether ``nodes`` (int64) is 0, 1, ..., ``count`` - 1."""
    cdef const int64_t[::1] ids = nodes
    cdef Py_ssize_t i
    if ids.shape[0] != count:
        return False
    for i in range(count):
        if ids[i] != i:
            return False
    return True


def any_label(list values):
    """Whether any Value of ``values`` has a label (one that is not empty)."""
    cdef Py_ssize_t i
    for i in range(len(values)):
        if (<ValueCore>values[i]).label:
            return True
    return False


def leaf_data(list values, Py_ssize_t count):
    """The ``.data`` of the first ``count`` Values of ``values`` (leaves), as float64; a
    TypeError for one that is no real number."""
    out = np.empty(count, dtype=np.float64)
    cdef double[::1] view = out
    cdef Py_ssize_t i
    for i in range(count):
        x = (<ValueCore>values[i])._data
        if type(x) is float:
            view[i] = <double>x
        elif isinstance(x, numbers.Real):
            view[i] = float(x)
        else:
            raise TypeError(f"a leaf's data must be a real number, got {x!r}")
    return out


cdef class TapeCore:
    """A tape's columns, its leaves and its op-node Values still alive."""

    cdef int32_t* _codes  # per node: its op code, LEAF for a leaf
    cdef PyObject** _live  # per node: its op-node Value while it lives (borrowed), or NULL
    cdef Py_ssize_t _nodes, _node_room
    cdef int64_t* _ids  # each node's inputs, node after node
    cdef Py_ssize_t _inputs, _input_room
    # The leaf Values, in node order, held (a constant is a new Value each time a number is
    # used). A leaf does not point back but by its borrowed ``_home``, so no cycle. (The
    # garbage collector does not see these references: a cycle through a leaf's label back
    # to the graph would be kept, not freed.)
    cdef PyObject** _leaves
    cdef Py_ssize_t _leaf_count, _leaf_room
    cdef dict _leaf_ids  # leaf_ids, once asked for
    cdef bint _leaves_moved  # whether a leaf of this tape has its home on another tape now
    cdef public bint sent  # once sent, no new graph starts on this tape (see current_tape)
    cdef object __weakref__

    def __cinit__(self):
        self._node_room = self._input_room = 256
        self._codes = <int32_t*>PyMem_Malloc(self._node_room * sizeof(int32_t))
        self._live = <PyObject**>PyMem_Malloc(self._node_room * sizeof(PyObject*))
        self._ids = <int64_t*>PyMem_Malloc(self._input_room * sizeof(int64_t))
        self._leaf_room = 64
        self._leaves = <PyObject**>PyMem_Malloc(self._leaf_room * sizeof(PyObject*))
        if self._codes == NULL or self._live == NULL or self._ids == NULL or self._leaves == NULL:
            raise MemoryError()

    def __dealloc__(self):
        # Op-node Values hold their tape: none is alive now, so no pointer is left to clear.
        global _last_tape
        if _last_tape == <PyObject*>self:
            _last_tape = NULL
        cdef Py_ssize_t i
        cdef ValueCore leaf
        for i in range(self._leaf_count):
            leaf = <ValueCore>self._leaves[i]
            if leaf._home == <PyObject*>self:
                leaf._home = NULL
            Py_DECREF(leaf)
        PyMem_Free(self._leaves)
        PyMem_Free(self._codes)
        PyMem_Free(self._live)
        PyMem_Free(self._ids)

    def __len__(self):
        return self._nodes

    cdef int _grow_nodes(self) except -1:
        cdef Py_ssize_t room = self._node_room * 2
        cdef void* codes = PyMem_Realloc(self._codes, room * sizeof(int32_t))
        if codes == NULL:
            raise MemoryError()
        self._codes = <int32_t*>codes
        cdef void* live = PyMem_Realloc(self._live, room * sizeof(PyObject*))
        if live == NULL:
            raise MemoryError()
        self._live = <PyObject**>live
        self._node_room = room
        return 0

    cdef inline Py_ssize_t _append_node(self, int32_t code) except -1:
        if self._nodes == self._node_room:
            self._grow_nodes()
        self._codes[self._nodes] = code
        self._live[self._nodes] = NULL
        self._nodes += 1
        return self._nodes - 1

    cdef inline int _append_input(self, int64_t node) except -1:
        cdef void* ids
        if self._inputs == self._input_room:
            ids = PyMem_Realloc(self._ids, self._input_room * 2 * sizeof(int64_t))
            if ids == NULL:
                raise MemoryError()
            self._ids = <int64_t*>ids
            self._input_room *= 2
        self._ids[self._inputs] = node
        self._inputs += 1
        return 0

    cdef inline ValueCore _op_node(self, int32_t code):
        """A node of op ``code`` whose inputs were just appended, and its Value."""
        cdef Py_ssize_t node = self._append_node(code)
        return self._value_at(node)

    cdef ValueCore _value_at(self, Py_ssize_t node):
        """A new Value for op node ``node``, pending, which the tape now finds."""
        cdef ValueCore out = _new_value()
        out.grad = 0.0
        out.label = ""
        out._tape = self
        out._id = node
        self._live[node] = <PyObject*>out
        return out

    def leaf_id(self, ValueCore value):
        """The node id of a leaf Value on this tape, adding the leaf on first use."""
        return self._leaf_id(value)

    # cdef, not cpdef: a cpdef method of a type with Python subclasses (Tape) looks itself
    # up by name on every call, in case a subclass overrides it.
    cdef Py_ssize_t _leaf_id(self, ValueCore value) except -1:
        if value._home == <PyObject*>self:
            return value._home_node
        cdef PyObject* found
        if self._leaves_moved:  # the leaf may be here, with its home on another tape now
            found = PyDict_GetItem(self.leaf_ids, value)
            if found != NULL:
                return PyLong_AsSsize_t(<object>found)
        cdef Py_ssize_t node = self._append_node(LEAF)
        self._append_leaf(value)
        if self._leaf_ids is not None:
            self._leaf_ids[value] = node
        if value._home != NULL:
            (<TapeCore>value._home)._leaves_moved = True
        value._home = <PyObject*>self
        value._home_node = node
        return node

    cdef int _append_leaf(self, ValueCore value) except -1:
        cdef void* grown
        if self._leaf_count == self._leaf_room:
            grown = PyMem_Realloc(self._leaves, self._leaf_room * 2 * sizeof(PyObject*))
            if grown == NULL:
                raise MemoryError()
            self._leaves = <PyObject**>grown
            self._leaf_room *= 2
        Py_INCREF(value)
        self._leaves[self._leaf_count] = <PyObject*>value
        self._leaf_count += 1
        return 0

    @property
    def leaf_ids(self):
        """Each leaf Value -> its node id, in node order (made when first asked, then kept
        up to date; do not change it)."""
        if self._leaf_ids is None:
            nodes = np.flatnonzero(self.codes_array() == LEAF).tolist()
            self._leaf_ids = {
                <object>self._leaves[i]: node for i, node in enumerate(nodes)
            }
        return self._leaf_ids

    def code(self, Py_ssize_t node):
        if not 0 <= node < self._nodes:
            raise IndexError(node)
        return self._codes[node]

    def codes_array(self, count=None):
        """The op codes of the first ``count`` nodes (all by default), as int64."""
        cdef Py_ssize_t n = self._nodes if count is None else min(<Py_ssize_t>count, self._nodes)
        out = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] view = out
        cdef Py_ssize_t i
        for i in range(n):
            view[i] = self._codes[i]
        return out

    def input_ids_array(self, count=None):
        """The first ``count`` entries of the input ids (all by default), as int64."""
        cdef Py_ssize_t n = self._inputs if count is None else min(<Py_ssize_t>count, self._inputs)
        out = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] view = out
        if n:
            memcpy(&view[0], self._ids, n * sizeof(int64_t))
        return out

    def columns(self):
        """A copy of the tape's columns (op codes, input ids), for ``has_columns``."""
        return (
            PyBytes_FromStringAndSize(<char*>self._codes, self._nodes * sizeof(int32_t)),
            PyBytes_FromStringAndSize(<char*>self._ids, self._inputs * sizeof(int64_t)),
        )

    def has_columns(self, tuple columns):
        """Whether this tape's columns are ``columns`` (``columns()`` of a tape), byte for
        byte: the same nodes, ops and inputs."""
        cdef bytes codes = columns[0], ids = columns[1]
        return (
            len(codes) == self._nodes * <Py_ssize_t>sizeof(int32_t)
            and len(ids) == self._inputs * <Py_ssize_t>sizeof(int64_t)
            and memcmp(self._codes, PyBytes_AS_STRING(codes), len(codes)) == 0
            and memcmp(self._ids, PyBytes_AS_STRING(ids), len(ids)) == 0
        )

    def live_values(self):
        """The op-node Values still alive."""
        cdef list values = []
        cdef Py_ssize_t node
        for node in range(self._nodes):
            if self._live[node] != NULL:
                values.append(<object>self._live[node])
        return values

    def node_value(self, Py_ssize_t node):
        """The Value of op node ``node``: the one alive, else one made now (with no data
        yet; the tape refers to it as to any other); and whether it was made now."""
        if not 0 <= node < self._nodes or self._codes[node] == LEAF:
            raise IndexError(f"{node} is no op node of this tape")
        if self._live[node] != NULL:
            return <object>self._live[node], False
        return self._value_at(node), True

    def held(self, kept):
        """The positions in ``kept`` (tape ids, ascending) of the nodes whose Values the
        tape can reach, those Values, and how many of them are leaves: every leaf, first
        and in node order, then the op-node Values still alive."""
        cdef const int64_t[::1] ids = np.ascontiguousarray(kept, dtype=np.int64)
        cdef Py_ssize_t n = ids.shape[0], j = 0, node, leaf = 0, found = 0, leaves
        positions = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] at = positions
        cdef list values = []
        for node in range(self._nodes):  # the leaves, in node order
            if j == n:
                break
            if self._codes[node] == LEAF:
                if ids[j] == node:
                    at[found] = j
                    found += 1
                    values.append(<object>self._leaves[leaf])
                leaf += 1
            if ids[j] == node:
                j += 1
        leaves = found
        for j in range(n):  # then the op nodes' Values alive
            node = ids[j]
            if 0 <= node < self._nodes and self._live[node] != NULL:
                at[found] = j
                found += 1
                values.append(<object>self._live[node])
        return positions[:found], values, leaves

    def absorb(self, TapeCore other):
        """Append ``other``'s nodes after this tape's and move its Values here."""
        cdef int64_t[::1] counts = opcodes.input_counts(other.codes_array()).astype(np.int64)
        cdef int64_t[::1] new_ids = np.empty(other._nodes, dtype=np.int64)
        cdef Py_ssize_t node, k, start = 0
        cdef ValueCore value
        leaves = {node: value for value, node in other.leaf_ids.items()}
        for node in range(other._nodes):
            if other._codes[node] == LEAF:
                new_ids[node] = self._leaf_id(leaves[node])
            else:
                for k in range(start, start + counts[node]):
                    self._append_input(new_ids[other._ids[k]])
                new_ids[node] = self._append_node(other._codes[node])
            start += counts[node]
        for node in range(other._nodes):
            if other._live[node] != NULL:
                value = <ValueCore>other._live[node]
                other._live[node] = NULL
                value._tape = self
                value._id = new_ids[node]
                self._live[value._id] = <PyObject*>value
        other.sent = True  # no Value refers to it now; it is freed


_local = threading.local()


cpdef TapeCore current_tape():
    """The tape a new graph (an op on leaves only) starts on, per thread.

    A graph that was sent is finished: the next op on leaves only starts a new tape, so a
    training loop records each step on a tape of its own and memory does not grow.
    """
    global _last_tape, _last_thread
    cdef unsigned long thread = PyThread_get_thread_ident()
    if _last_tape != NULL and _last_thread == thread and not (<TapeCore>_last_tape).sent:
        return <TapeCore>_last_tape
    ref = getattr(_local, "tape", None)
    tape = ref() if ref is not None else None
    if tape is None or tape.sent:
        if _tape_class is None:
            raise RuntimeError("the interpreter is exiting: no new graphs")
        tape = _tape_class()
        _local.tape = weakref.ref(tape)
    _last_tape, _last_thread = <PyObject*>tape, thread
    return tape


def tape_of(values):
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
