"""How much memory the engine needs, estimated from sizes alone, before anything is built.

The server charges these estimates to its memory budget before it compiles or evaluates
(``gradserve.server.service.admission``). They are upper estimates of the peak above idle,
checked against tracemalloc's measured peak over graphs of every shape (wide fan-in, deep
chain, MLP, many rows, tangents) in tests/test_resilience_estimate.py: never below it, at
most 3x above it.
"""

from dataclasses import dataclass

from gradserve.server.engine.errors import QUOTE_LIMIT

# Compiling: the graph's fields as arrays, the checks' and the scheduler's temporaries, and
# the plan (groups, gathered input ids, chains' per-node lists). Measured peak: about 32
# bytes a node for a wide fan-in, 100 for an MLP, 220 for a long chain (the chain's
# tuples and lists of Python objects); this bound holds for all of them.
COMPILE_BYTES_PER_NODE = 240
COMPILE_BYTES_PER_INPUT = 24
# A plan keeps a reference to each label, and of a label longer than a message quotes, a
# ``Cut`` of it (errors.py): its first QUOTE_LIMIT characters and its length. Measured with
# tracemalloc: 557 bytes a cut label of ASCII text, 752 of 4-byte characters.
COMPILE_BYTES_PER_LABEL = 8
COMPILE_BYTES_PER_CUT_LABEL = 768


# Finding a graph's plan in the cache: its structure as arrays and lists (wire.graph_arrays),
# hashed for its digest. Each id 4 bytes (uint32), and per node its op and input count and
# a byte of the fan-in check's mask; each op name and label a Python string, its list entry
# and header (rounded), and up to 4 bytes a character (one 4-byte character makes every
# character of its string 4 bytes), but an empty one only its list entry (Python has one
# empty string); and the arrays' and lists' own objects. Measured with tracemalloc
# (tests/test_resilience_estimate.py): 13 bytes a node of a chain, 257 a label of 200 ASCII
# characters, 885 of 200 4-byte ones, 8 an empty one.
STRUCTURE_BYTES_PER_NODE = 9
STRUCTURE_BYTES_PER_INPUT = 4
STRUCTURE_BYTES_PER_STRING = 96
STRUCTURE_BYTES_PER_EMPTY_STRING = 8
STRUCTURE_BYTES_PER_CHARACTER = 4
STRUCTURE_OBJECT_BYTES = 16 * 1024


@dataclass(frozen=True)
class PlanSizes:
    """What a plan's evaluation allocates in proportion to: counted once per plan."""

    nodes: int
    edges: int  # inputs read by its op nodes, all told
    positions: int  # input positions of its groups (a node reading k inputs has k)
    chain_nodes: int  # nodes in its stretches (chains)


# Per node and row: values and gradients (8 bytes each) and a group's outputs, upstream
# gradients and results while it runs; per input edge and row: the gathered inputs, the
# local derivatives and the scatter's copies. Per input position: an op call's arguments,
# one array view each (about 130 bytes with its shape) and the tuples that hold them, and
# the arrays its backward returns (a sum of a million inputs: 145 MB at each call). Per
# chain node: the single-row float path's lists. With tangents: their two arrays, every
# group's local derivatives kept for the reverse pass and the second-order terms; per
# position the same one op call at a time (a sum's forward tangents are summed in blocks
# of positions, second_order._directional). Measured peaks (tests/test_resilience_estimate
# .py): 208 bytes a position for the wide HVP of bench/abusers.py, 84 a node-row of a long
# chain with tangents (68 of them per node and edge, the rest the chain's slices).
FIRST_ORDER = (24, 16, 200)  # bytes per node-row, per edge-row, per position
WITH_TANGENTS = (40, 32, 170)
BYTES_PER_CHAIN_NODE = 240
# A chain's local derivatives are taken a slice of about a million node-rows at a time:
# the slice's inputs, outputs and derivatives.
CHAIN_SLICE_BYTES_PER_NODE_ROW = 32
CHAIN_SLICE_NODE_ROWS = 1 << 20


def compile_bytes(nodes: int, inputs: int, labels: int = 0, label_bytes: int = 0) -> int:
    """The peak of compiling a graph of ``nodes`` nodes reading ``inputs`` inputs, with
    ``labels`` labels of at most ``label_bytes`` bytes (of UTF-8) all told: a bound such as
    the request's length will do, so that nothing need be summed first."""
    cut_labels = min(labels, label_bytes // (QUOTE_LIMIT + 1))
    return (
        COMPILE_BYTES_PER_NODE * nodes
        + COMPILE_BYTES_PER_INPUT * inputs
        + COMPILE_BYTES_PER_LABEL * labels
        + COMPILE_BYTES_PER_CUT_LABEL * cut_labels
    )


def structure_bytes(nodes: int, inputs: int, strings: int, empty: int, characters: int) -> int:
    """What finding a graph's plan in the cache holds at its peak: a graph of ``nodes``
    nodes reading ``inputs`` inputs, its ``strings`` (op names and labels, and ``empty``
    ones besides) of
    ``characters`` characters all told, as the lookup makes them. Far less than compiling
    (``compile_bytes``): a hit needs no more."""
    return (
        STRUCTURE_BYTES_PER_NODE * nodes
        + STRUCTURE_BYTES_PER_INPUT * inputs
        + STRUCTURE_BYTES_PER_STRING * strings
        + STRUCTURE_BYTES_PER_EMPTY_STRING * empty
        + STRUCTURE_BYTES_PER_CHARACTER * characters
        + STRUCTURE_OBJECT_BYTES
    )


def evaluation_bytes(sizes: PlanSizes, rows: int, tangents: bool = False) -> int:
    """The peak of evaluating ``rows`` rows (and their tangents): every array evaluation
    allocates, the results it returns included."""
    per_node_row, per_edge_row, per_position = WITH_TANGENTS if tangents else FIRST_ORDER
    chain_slices = min(sizes.chain_nodes * rows, CHAIN_SLICE_NODE_ROWS)
    return (
        (per_node_row * sizes.nodes + per_edge_row * sizes.edges) * rows
        + per_position * sizes.positions
        + BYTES_PER_CHAIN_NODE * sizes.chain_nodes
        + CHAIN_SLICE_BYTES_PER_NODE_ROW * chain_slices
    )


def evaluation_bytes_per_row(sizes: PlanSizes, tangents: bool = False) -> int:
    """What each more row adds to ``evaluation_bytes`` at most."""
    per_node_row, per_edge_row, _ = WITH_TANGENTS if tangents else FIRST_ORDER
    chain = CHAIN_SLICE_BYTES_PER_NODE_ROW * sizes.chain_nodes
    return per_node_row * sizes.nodes + per_edge_row * sizes.edges + chain


def results_bytes(nodes: int, rows: int) -> int:
    """The selected nodes' values and gradients while a reply is packed: gathered, copied
    in the wire's row-by-row order, and joined into the message (16 bytes each, 3 times)."""
    return 3 * 16 * nodes * rows + 5 * nodes
