"""The SDK's two recording cores: the compiled one (``compiled_recorder.pyx``, built by Cython when
the client installs) and the Python fallback (``recorder.py``: no C compiler, or
``GRADSERVE_PURE_PYTHON=1``).

This test run uses the compiled core; the SDK's whole suite (``tests/test_sdk_*.py``) runs
once more here with the variable set. Both cores record the bench's MLP as the bench's own
column builder lays it out (an oracle written apart from either), and a program with
constants, merged tapes, a variadic op, dropped and re-made Values gives the same columns
and Values from both.
"""

import json
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bench import graphs, peers
from bench.graphs import MlpShape
from gradserve.client import Value, recording

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PURE = {**os.environ, "GRADSERVE_PURE_PYTHON": "1"}

# Run by each core in a subprocess: what it recorded, as JSON.
PROGRAM = """
import json, sys
import numpy as np
sys.path.insert(0, ".")
from bench import peers
from bench.graphs import MlpShape
from gradserve.client import Value, recording
from gradserve.v1 import gradserve_pb2 as pb

def columns(root):
    sub = root._tape.subgraph([root._id])
    graph = pb.Graph.FromString(sub.graph(sub.leaf_values()))
    names = ["" if k == 0 else graph.op_names[k - 1] for k in graph.node_ops]
    return [names, list(graph.input_counts), list(graph.input_ids), list(graph.leaf_values)]

shape = MlpShape(4, 3, 2)
values = shape.leaves(np.random.default_rng(7))
mlp = columns(peers.mlp_loss([Value(v) for v in values.tolist()], shape))

x, y, z = Value(0.5, "x"), Value(-1.5, "y"), Value(2.0)
a = 2 * x + 1                       # constants on either side
b = (y - 3) ** 2 / x                # a second graph on the same open tape
c = (z * z).tanh()                  # ...and a third
d = a.apply("fma", b, c)            # variadic, any op name
e = d.maximum(y).minimum(0.25) - abs(-x) + (1 - y).exp().log().sigmoid().relu()
f = e.sqrt().sin().cos().neg() + x / 4 + 3 ** y
del a, b, c                         # dropped: their nodes stay
held = f._prev  # made now for dropped inputs, and kept while held
prev = [(v._op, v._id, v.label) for v in held]
twice = all(p is q for p, q in zip(held, f._prev, strict=True))  # the same objects again
program = columns(f)
live = sorted(v._id for v in f._tape.live_values())
g = Value(1.5) * 2                  # a graph on a tape of its own...
g._tape.sent = True                 # (as after a backward)
h = (Value(0.5) + x).exp() * g      # ...read by a new one: the smaller tape is appended
merged = [columns(h), g._tape is h._tape, [v._op for v in h._prev]]
print(json.dumps({"compiled": recording.COMPILED, "mlp": mlp, "program": program,
                  "prev": prev, "twice": twice, "live": live, "merged": merged}))
"""


def recorded(env: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.requires_tool("cc")
def test_the_compiled_core_is_built_and_used_by_default():
    assert recording.COMPILED
    assert recording.core.__file__.endswith((".so", ".pyd")), recording.core.__file__


def test_the_environment_variable_picks_the_python_core():
    assert recorded(PURE)["compiled"] is False


@pytest.mark.parametrize("variable", ["", "0"])
def test_without_the_compiled_core_the_python_core_is_used(variable):
    """Where the compiled core is not built (no C compiler), importing it fails and the SDK
    records with the Python core, whatever the variable says short of asking for it."""
    program = (
        "import sys; sys.modules['gradserve.client.compiled_recorder'] = None\n"
        "from gradserve.client import Value, recording\n"
        "assert recording.core.__name__ == 'gradserve.client.recorder', recording.core\n"
        "assert recording.COMPILED is False\n"
        "print((Value(2.0) * 3)._tape is not None)"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "GRADSERVE_PURE_PYTHON": variable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def expressions(columns: list, table: dict) -> list[int]:
    """Each node of a graph's columns as one number per distinct expression (a leaf by its
    value, an op node by its op and its inputs' numbers), in one pass in node order: two
    graphs hold the same expressions, however numbered, when these match."""
    names, counts, ids, leaf_values = columns
    leaves = iter(leaf_values)
    found, start = [], 0
    for name, count in zip(names, counts, strict=True):
        inputs = tuple(found[i] for i in ids[start : start + count])
        key = ("leaf", next(leaves)) if name == "" else (name, inputs)
        found.append(table.setdefault(key, len(table)))
        start += count
    return found


def test_both_cores_record_the_bench_mlp_as_the_bench_lays_it_out():
    """The bench's column builder puts all leaves first and groups ops by layer; the SDK
    records in program order. The same expressions, node for node, either way."""
    shape = MlpShape(4, 3, 2)
    values = shape.leaves(np.random.default_rng(7))
    oracle = graphs.mlp(shape, values)
    names = ["" if k == 0 else graphs.OP_NAMES[k - 1] for k in oracle.node_ops.tolist()]
    columns = [names, oracle.input_counts.tolist(), oracle.input_ids.tolist(), values.tolist()]
    table: dict = {}
    expected = expressions(columns, table)
    for env in (os.environ, PURE):
        got = expressions(recorded(dict(env))["mlp"], table)
        assert len(got) == len(expected) == shape.node_count
        assert sorted(got) == sorted(expected)  # no node more, none fewer, none different
        assert got[-1] == expected[-1]  # the loss


def test_both_cores_record_the_same_program_and_values():
    compiled, pure = recorded(dict(os.environ)), recorded(PURE)
    assert compiled.pop("compiled") is recording.COMPILED and pure.pop("compiled") is False
    assert compiled == pure
    assert compiled["twice"] is True
    assert [op for op, _, _ in compiled["prev"]] == ["+", "pow"]  # (... + x / 4) + 3 ** y
    assert len(compiled["live"]) == 5  # d, e, f, and the two inputs of f that _prev made
    names, _, _, leaf_values = compiled["merged"][0]
    assert compiled["merged"][1:] == [True, ["exp", "*"]]
    assert sorted(names) == ["", "", "", "", "add", "exp", "mul", "mul"] and names[-1] == "mul"
    assert sorted(leaf_values) == [0.5, 0.5, 1.5, 2.0]  # x, 0.5, 1.5 and the constant 2


def test_a_leaf_read_by_two_open_tapes_keeps_its_node_on_each():
    """A parameter read by the graph of one step and then of another while the first is
    still open, then by the first again: each tape finds the node it gave it."""
    w = Value(3.0)
    first = w * 2.0  # tape 1
    first._tape.sent = True  # as after a backward: the next op on leaves starts tape 2
    second = w * 5.0
    assert second._tape is not first._tape
    again = first + w  # back on tape 1: w is its node 0 there, not a new leaf
    assert len(first._tape) == len(again._tape) == 4  # w, 2.0, w*2, +w
    assert again._tape.input_ids_array().tolist() == [0, 1, 2, 0]
    last = second + w  # and on tape 2, its node 0 there
    assert len(last._tape) == 4 and last._tape.input_ids_array().tolist() == [0, 1, 2, 0]
    assert [v._id for v in (again._prev[1], last._prev[1])] == [-1, -1]  # w itself, a leaf
    assert again._prev[1] is w and last._prev[1] is w


def test_each_thread_starts_its_graphs_on_a_tape_of_its_own():
    x, y = Value(1.0), Value(2.0)
    barrier = threading.Barrier(2)
    found = {}

    def record(name: str) -> None:
        nodes = []
        for _ in range(200):
            barrier.wait()  # the two threads' ops interleave
            nodes.append(x * y)
        found[name] = nodes

    threads = [threading.Thread(target=record, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tapes = {name: {id(v._tape) for v in nodes} for name, nodes in found.items()}
    assert len(tapes["a"]) == len(tapes["b"]) == 1 and tapes["a"] != tapes["b"]
    tape = found["a"][0]._tape
    assert len(tape) == 2 + 200  # x and y once, then 200 products, none of the other thread's
    assert tape.input_ids_array().tolist() == [0, 1] * 200


def test_values_dropped_and_made_again_never_leave_a_stale_entry():
    x = Value(1.0)
    keep = x + 1.0
    for _ in range(1000):  # temporaries: each frees its entry
        keep * 2.0
    tape = keep._tape
    assert [v._id for v in tape.live_values()] == [keep._id]
    made, _ = tape.node_value(keep._id + 2)  # a dropped product, made again
    assert made._tape is tape and made._data is None
    assert sorted(v._id for v in tape.live_values()) == [keep._id, keep._id + 2]
    del made
    assert [v._id for v in tape.live_values()] == [keep._id]


def test_recording_holds_at_most_128_bytes_a_node():
    """W1's layout at a smaller width: what the recorded loss holds (tape columns, leaf
    bookkeeping, the Values alive) per node, the leaves made beforehand not counted."""
    shape = MlpShape(60, 60, 3)
    leaves = [Value(v) for v in shape.leaves(np.random.default_rng(1)).tolist()]
    tracemalloc.start()
    try:
        loss = peers.mlp_loss(leaves, shape)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    nodes = len(loss._tape)
    assert nodes == shape.node_count
    assert held / nodes <= 128, held / nodes


@pytest.mark.slow
def test_the_sdk_suite_passes_on_the_python_core():
    suite = sorted(str(path) for path in TESTS.glob("test_sdk_*.py"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suite],
        cwd=ROOT,
        env=PURE,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
