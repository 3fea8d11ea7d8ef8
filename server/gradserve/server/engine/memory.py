"""How much memory the engine needs, estimated from sizes alone, before anything is built.

The server charges these estimates to its memory budget before it compiles or evaluates
(``gradserve.server.service.admission``). They are upper estimates of the peak above idle,
measured on this project's benchmarks (docs/running-safely.md).
"""

# Compiling: the graph's fields as arrays, the checks' and the scheduler's temporaries, and
# the plan (groups, gathered input ids, scatters). Measured peak on W1 (a wide MLP) and W2
# (a chain): 100-150 bytes a node with about one and a half inputs each.
COMPILE_BYTES_PER_NODE = 160
COMPILE_BYTES_PER_INPUT = 24

# Evaluating: values and gradients (8 bytes each), a group's gathered inputs and the op's
# outputs and local derivatives while that group runs (bounded by about as much again).
EVALUATION_BYTES_PER_NODE_ROW = 40


def compile_bytes(nodes: int, inputs: int) -> int:
    return COMPILE_BYTES_PER_NODE * nodes + COMPILE_BYTES_PER_INPUT * inputs


def evaluation_bytes(nodes: int, rows: int) -> int:
    return EVALUATION_BYTES_PER_NODE_ROW * nodes * rows


def results_bytes(nodes: int, rows: int) -> int:
    """The selected nodes' values and gradients while a reply is packed: gathered, copied
    in the wire's row-by-row order, and joined into the message (16 bytes each, 3 times)."""
    return 3 * 16 * nodes * rows + 5 * nodes
