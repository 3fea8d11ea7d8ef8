"""Op codes: what a tape records per node, an op's name and its number of inputs in one int.

A code stands for (op name, input count), so a tape needs one column per node for both, and
the operators' codes are made at import, so recording an operator looks nothing up. Codes are
per process; a graph that is sent gets a table of only the op names it uses (``op_table``).
"""

import threading

import numpy as np

LEAF = 0

_names = [""]  # per code: the op's name ("" for a leaf)
_counts = [0]  # per code: its number of inputs
_codes: dict[tuple[str, int], int] = {}
_lock = threading.Lock()


def code(name: str, count: int) -> int:
    """The code of op ``name`` reading ``count`` inputs, made on first use."""
    found = _codes.get((name, count))
    if found is None:
        with _lock:
            found = _codes.get((name, count))
            if found is None:
                _names.append(name)
                _counts.append(count)
                found = _codes[name, count] = len(_names) - 1
    return found


# The standard ops' codes, which the operators record (numbered in this order in every
# process, first of all).
ADD, SUB, MUL, DIV, POW = (code(op, 2) for op in ("add", "sub", "mul", "div", "pow"))
NEG, TANH, RELU, EXP, LOG, SIGMOID = (
    code(op, 1) for op in ("neg", "tanh", "relu", "exp", "log", "sigmoid")
)
SQRT, ABS, SIN, COS = (code(op, 1) for op in ("sqrt", "abs", "sin", "cos"))
MAX, MIN = (code(op, 2) for op in ("max", "min"))


def name(code: int) -> str:
    return _names[code]


_SYMBOLS = {"add": "+", "mul": "*"}


def symbol(code: int) -> str:
    """How ``Value._op`` and drawings name an op, as micrograd's Value: '+' for add, '*' for
    mul, the op's name for any other op ('tanh'), '' for a leaf."""
    op = _names[code]
    return _SYMBOLS.get(op, op)


def input_counts(codes: np.ndarray) -> np.ndarray:
    """Each node's number of inputs."""
    return np.array(_counts, dtype=np.uint32)[codes]


def op_table(codes: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The names of the ops that ``codes`` use, and each node's op index into them as the
    Graph message has it (1-based; 0 for a leaf)."""
    known = len(_names)
    index: dict[str, int] = {}
    node_op = np.zeros(known, dtype=np.uint32)
    for used in np.flatnonzero(np.bincount(codes, minlength=known)).tolist():
        if used != LEAF:
            node_op[used] = index.setdefault(_names[used], len(index) + 1)
    return list(index), node_op[codes]
