"""Write conformance/cases.json: the conformance cases and their expected results.

Run: ``python3 conformance/oracle.py`` (plain Python: no NumPy, no gradserve). The expected
numbers come from this file alone, never from a server: values by evaluating each graph with
``math``, gradients by forward-mode differentiation (dual numbers, one pass per node: the
tangent of the output when that node's value moves), a different algorithm from the
server's reverse mode. The 300,000-node chain gets its gradients from the closed form of a
chain's derivative (a product of local derivatives, and for the shared leaf a sum of such
products). Published numbers anchor the classic examples (micrograd's README and tests, the
notebook's neuron): the script stops if they disagree.

``tests/test_conformance.py`` checks that running this again writes the same file, so the
JSON never drifts from its oracle. README.md beside this file describes the format.
"""

import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases.json"

TOKEN = "conformance-token"
MAX_FAN_IN = 1000
CHAIN_STEPS = 149_999  # two leaves + 2 nodes a step: 300,000 nodes
CHUNK = 65_536
SAMPLES = (0, 1, 2, 3, 1000, 150_001, 299_998, 299_999)

# Each op: (forward, partial derivatives) on floats.
OPS = {
    "add": (lambda a, b: a + b, lambda a, b: (1.0, 1.0)),
    "sub": (lambda a, b: a - b, lambda a, b: (1.0, -1.0)),
    "mul": (lambda a, b: a * b, lambda a, b: (b, a)),
    "div": (lambda a, b: a / b, lambda a, b: (1.0 / b, -a / (b * b))),
    "pow": (
        lambda x, p: math.pow(x, p),
        lambda x, p: (p * math.pow(x, p - 1), math.pow(x, p) * math.log(x) if x > 0 else 0.0),
    ),
    "neg": (lambda x: -x, lambda x: (-1.0,)),
    "relu": (lambda x: max(x, 0.0), lambda x: (1.0 if x > 0 else 0.0,)),
    "tanh": (math.tanh, lambda x: (1.0 - math.tanh(x) ** 2,)),
    "exp": (math.exp, lambda x: (math.exp(x),)),
    "log": (math.log, lambda x: (1.0 / x,)),
    "sigmoid": (
        lambda x: 1.0 / (1.0 + math.exp(-x)),
        lambda x: (math.exp(-x) / (1.0 + math.exp(-x)) ** 2,),
    ),
    "sin": (math.sin, lambda x: (math.cos(x),)),
    "sum": (lambda *xs: math.fsum(xs), lambda *xs: (1.0,) * len(xs)),
}


class Nodes:
    """A graph as the cases write it: a list of {"leaf": v} and {"op": name, "inputs": ids}."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []

    def leaf(self, value: float, label: str = "") -> int:
        return self._add({"leaf": value}, label)

    def op(self, name: str, *inputs: int, label: str = "") -> int:
        return self._add({"op": name, "inputs": list(inputs)}, label)

    def _add(self, node: dict, label: str) -> int:
        if label:
            node["label"] = label
        self.nodes.append(node)
        return len(self.nodes) - 1

    def leaves(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if "leaf" in node]


def forward(nodes: list[dict], leaf_values: list[float] | None = None) -> list[float]:
    """Every node's value; ``leaf_values`` replace the graph's own, in leaf order."""
    given = iter(leaf_values) if leaf_values is not None else None
    values: list[float] = []
    for node in nodes:
        if "leaf" in node:
            values.append(next(given) if given is not None else node["leaf"])
        else:
            values.append(OPS[node["op"]][0](*(values[i] for i in node["inputs"])))
    return values


def tangents(nodes: list[dict], values: list[float], moved: int) -> list[float]:
    """Forward mode: d(node)/d(node ``moved``) for every node, holding the other leaves and
    treating ``moved``'s value as free (its own inputs do not move it)."""
    dots = [0.0] * len(nodes)
    dots[moved] = 1.0
    for i in range(moved + 1, len(nodes)):
        node = nodes[i]
        if "op" in node:
            args = [values[j] for j in node["inputs"]]
            partials = OPS[node["op"]][1](*args)
            dots[i] = sum(p * dots[j] for p, j in zip(partials, node["inputs"], strict=True))
    return dots


def results(nodes, outputs=None, seeds=None, leaf_values=None) -> tuple[list, list]:
    """(values, gradients) of every node: gradient = sum of seed * d(output)/d(node)."""
    outputs = outputs if outputs is not None else [len(nodes) - 1]
    seeds = seeds if seeds is not None else [1.0] * len(outputs)
    values = forward(nodes, leaf_values)
    grads = []
    for k in range(len(nodes)):
        dots = tangents(nodes, values, k)
        grads.append(sum(s * dots[o] for o, s in zip(outputs, seeds, strict=True)))
    return values, grads


def expect_ok(nodes, selected, outputs=None, seeds=None, rows=None) -> dict:
    """The expected Evaluate results for the nodes ``selected``, over ``rows`` of leaves."""
    values, grads = [], []
    for row in rows or [None]:
        v, g = results(nodes, outputs, seeds, row)
        values += [v[i] for i in selected]
        grads += [g[i] for i in selected]
    return {
        "status": "OK",
        "node_ids": selected,
        "values": values,
        "grads": grads,
        "rows": len(rows or [None]),
        "plan_digest_length": 16,
    }


def expect_error(status: str, field: str | None, node: int | None, *contains: str) -> dict:
    expect = {"status": status, "message_contains": list(contains)}
    if field is not None:
        expect["field"] = field
    if node is not None:
        expect["node"] = node
    return expect


def close(got: float, want: float, tolerance: float = 1e-4) -> bool:
    return abs(got - want) <= tolerance


# --- the graphs -----------------------------------------------------------------------


def micrograd_more_ops() -> tuple[Nodes, dict]:
    """micrograd's test/test_engine.py::test_more_ops (also its README's example)."""
    g = Nodes()
    a, b = g.leaf(-4.0, "a"), g.leaf(2.0, "b")
    c = g.op("add", a, b, label="c")
    d = g.op("add", g.op("mul", a, b), g.op("pow", b, g.leaf(3.0)), label="d")
    c = g.op("add", g.op("add", c, c), g.leaf(1.0), label="c")
    c = g.op("add", g.op("add", g.op("add", g.leaf(1.0), c), c), g.op("neg", a), label="c")
    d = g.op("add", g.op("add", d, g.op("mul", d, g.leaf(2.0))), g.op("relu", g.op("add", b, a)))
    d = g.op("add", g.op("add", d, g.op("mul", g.leaf(3.0), d)), g.op("relu", g.op("sub", b, a)))
    e = g.op("sub", c, d, label="e")
    f = g.op("pow", e, g.leaf(2.0), label="f")
    h = g.op("div", f, g.leaf(2.0))
    h = g.op("add", h, g.op("div", g.leaf(10.0), f), label="g")
    return g, {"a": a, "b": b, "g": h}


def micrograd_sanity_check() -> tuple[Nodes, dict]:
    """micrograd's test_sanity_check: z = 2x + 2 + x, q = relu(z) + z x, h = relu(z z),
    y = h + q + q x, at x = -4."""
    g = Nodes()
    x = g.leaf(-4.0, "x")
    z = g.op("add", g.op("add", g.op("mul", g.leaf(2.0), x), g.leaf(2.0)), x, label="z")
    q = g.op("add", g.op("relu", z), g.op("mul", z, x), label="q")
    h = g.op("relu", g.op("mul", z, z), label="h")
    y = g.op("add", g.op("add", h, q), g.op("mul", q, x), label="y")
    return g, {"x": x, "y": y}


def readme_expression() -> tuple[Nodes, dict]:
    """The README's Python SDK example: c = a + b, d = a*b + b**3,
    e = relu(c - d) + 2 tanh(c) / (1 + d**2), at a = -4, b = 2."""
    g = Nodes()
    a, b = g.leaf(-4.0, "a"), g.leaf(2.0, "b")
    c = g.op("add", a, b, label="c")
    d = g.op("add", g.op("mul", a, b), g.op("pow", b, g.leaf(3.0)), label="d")
    left = g.op("relu", g.op("sub", c, d))
    right = g.op(
        "div",
        g.op("mul", g.leaf(2.0), g.op("tanh", c)),
        g.op("add", g.leaf(1.0), g.op("pow", d, g.leaf(2.0))),
    )
    e = g.op("add", left, right, label="e")
    return g, {"a": a, "b": b, "e": e}


def notebook_expression() -> tuple[Nodes, dict]:
    """The notebook's first expression: c = a + b, e = c * d, with a = 5, b = 3, d = 10."""
    g = Nodes()
    a, b = g.leaf(5.0, "a"), g.leaf(3.0, "b")
    c = g.op("add", a, b, label="c")
    d = g.leaf(10.0, "d")
    e = g.op("mul", c, d, label="e")
    return g, {"a": a, "b": b, "c": c, "d": d, "e": e}


def neuron() -> tuple[Nodes, dict]:
    """The notebook's neuron: o = tanh(x1*w1 + x2*w2 + b)."""
    g = Nodes()
    x1, x2 = g.leaf(2.0, "x1"), g.leaf(0.0, "x2")
    w1, w2 = g.leaf(-3.0, "w1"), g.leaf(1.0, "w2")
    b = g.leaf(6.8813735870195432, "b")
    x1w1 = g.op("mul", x1, w1, label="x1*w1")
    x2w2 = g.op("mul", x2, w2, label="x2*w2")
    s = g.op("add", x1w1, x2w2, label="x1*w1 + x2*w2")
    n = g.op("add", s, b, label="n")
    o = g.op("tanh", n, label="o")
    return g, {"x1": x1, "x2": x2, "w1": w1, "w2": w2, "b": b, "n": n, "o": o}


def everyday_ops() -> tuple[Nodes, dict]:
    """A node for each remaining standard op the clients' builders name, and a variadic sum."""
    g = Nodes()
    x, y = g.leaf(0.75, "x"), g.leaf(1.5, "y")
    parts = [
        g.op("exp", x),
        g.op("log", y),
        g.op("sigmoid", x),
        g.op("sin", y),
        g.op("div", x, y),
        g.op("sub", y, x),
        g.op("neg", x),
    ]
    out = g.op("sum", *parts, x, label="out")
    return g, {"x": x, "y": y, "out": out}


def chain_rule() -> dict:
    """The 300,000-node graph, as a rule: leaves c and x, then CHAIN_STEPS times
    y = tanh(previous + c). Input -1 is the previous node; other inputs are node ids."""
    return {
        "leaves": [{"leaf": 0.25, "label": "c"}, {"leaf": 0.5, "label": "x"}],
        "repeat": CHAIN_STEPS,
        "steps": [{"op": "add", "inputs": [-1, 0]}, {"op": "tanh", "inputs": [-1]}],
    }


def chain_expectation() -> dict:
    """The chain's values forward, and its gradients by the chain rule's closed form:
    d(last)/d(node k) is the product of the local derivatives after k; c feeds every add,
    so its gradient is the sum of the adds' gradients."""
    c, x = 0.25, 0.5
    values = [c, x]
    for _ in range(CHAIN_STEPS):
        s = values[-1] + c
        values += [s, math.tanh(s)]
    n = len(values)
    grads = [0.0] * n
    grads[-1] = 1.0
    for k in range(n - 1, 2, -2):  # k: a tanh node, k - 1: its add
        grads[k - 1] = grads[k] * (1.0 - values[k] ** 2)
        grads[k - 2] = grads[k - 1]  # the previous node feeds the add with derivative 1
    grads[0] = math.fsum(grads[k] for k in range(2, n, 2))  # c feeds every add
    samples = list(SAMPLES)
    return {
        "status": "OK",
        "total_nodes": n,
        "chunks": -(-n // CHUNK),
        "samples": {
            "node_ids": samples,
            "values": [values[i] for i in samples],
            "grads": [grads[i] for i in samples],
        },
        "value_sum": math.fsum(values),
        "grad_sum": math.fsum(grads),
    }


# --- the cases --------------------------------------------------------------------------


def evaluate(request: dict, expect: dict, rpc: str = "Evaluate") -> dict:
    return {"rpc": rpc, "request": request, "expect": expect}


def graph_case(name: str, about: str, nodes: Nodes, calls: list[dict]) -> dict:
    return {"name": name, "about": about, "graph": {"nodes": nodes.nodes}, "calls": calls}


def raw_case(name: str, about: str, raw: dict, calls: list[dict]) -> dict:
    return {"name": name, "about": about, "graph": {"raw": raw}, "calls": calls}


def number_cases() -> list[dict]:
    cases = []
    g, ids = micrograd_more_ops()
    expect = expect_ok(g.nodes, [ids["a"], ids["b"], ids["g"]])
    a_grad, b_grad, g_value = expect["grads"][0], expect["grads"][1], expect["values"][2]
    assert close(g_value, 24.7041) and close(a_grad, 138.8338) and close(b_grad, 645.5773)
    sel = {"selection": "SELECTION_NODES", "nodes": [ids["a"], ids["b"], ids["g"]]}
    cases.append(
        graph_case(
            "micrograd_test_more_ops",
            "micrograd's test_more_ops (its README example): g = 24.7041, dg/da = 138.8338, "
            "dg/db = 645.5773",
            g,
            [evaluate(sel, expect)],
        )
    )

    g, ids = micrograd_sanity_check()
    expect = expect_ok(g.nodes, [ids["x"], ids["y"]])
    assert close(expect["values"][1], -20.0) and close(expect["grads"][0], 46.0)
    sel = {"selection": "SELECTION_NODES", "nodes": [ids["x"], ids["y"]]}
    cases.append(
        graph_case(
            "micrograd_test_sanity_check",
            "micrograd's test_sanity_check: y = -20, dy/dx = 46",
            g,
            [evaluate(sel, expect)],
        )
    )

    g, ids = readme_expression()
    expect = expect_ok(g.nodes, [ids["a"], ids["b"], ids["e"]])
    # Closed form: d = -8 + 8 = 0 and c - d = -2 < 0, so relu's branch is off and
    # de/dd = -4 d tanh(c) / (1 + d^2)^2 = 0; so de/da = de/db = de/dc = 2 (1 - tanh(c)^2).
    slope = 2 * (1 - math.tanh(-2.0) ** 2)
    assert close(expect["values"][2], 2 * math.tanh(-2.0), 1e-12)
    assert close(expect["grads"][0], slope, 1e-12) and close(expect["grads"][1], slope, 1e-12)
    sel = {"selection": "SELECTION_NODES", "nodes": [ids["a"], ids["b"], ids["e"]]}
    cases.append(
        graph_case(
            "readme_expression",
            "the README's e = relu(c - d) + 2 tanh(c) / (1 + d**2) at a = -4, b = 2",
            g,
            [evaluate(sel, expect)],
        )
    )

    g, ids = notebook_expression()
    every = list(range(len(g.nodes)))
    expect = expect_ok(g.nodes, every)
    assert expect["values"][-1] == 80.0 and expect["grads"][:4] == [10.0, 10.0, 10.0, 8.0]
    cases.append(
        graph_case(
            "notebook_expression",
            "the notebook's e = (a + b) * d: e = 80, de/da = de/db = 10, de/dd = 8",
            g,
            [evaluate({"selection": "SELECTION_ALL"}, expect)],
        )
    )

    g, ids = neuron()
    every = list(range(len(g.nodes)))
    expect = expect_ok(g.nodes, every)
    grad = dict(zip(every, expect["grads"], strict=True))
    assert close(expect["values"][ids["o"]], math.sqrt(0.5))
    assert close(grad[ids["x1"]], -1.5) and close(grad[ids["w1"]], 1.0)
    assert close(grad[ids["x2"]], 0.5) and close(grad[ids["w2"]], 0.0)
    assert close(grad[ids["n"]], 0.5)
    cases.append(
        graph_case(
            "notebook_neuron",
            "the notebook's neuron o = tanh(x1*w1 + x2*w2 + b): o = 0.7071, do/dx1 = -1.5, "
            "do/dw1 = 1, do/dx2 = 0.5, do/dw2 = 0; Evaluate and EvaluateStream agree",
            g,
            [
                evaluate({"selection": "SELECTION_ALL"}, expect),
                evaluate(
                    {"selection": "SELECTION_ALL", "chunk_size": 4},
                    {**expect, "chunks": 3},
                    rpc="EvaluateStream",
                ),
            ],
        )
    )

    leaves = g.leaves()
    rows = [
        [2.0, 0.0, -3.0, 1.0, 6.8813735870195432],
        [1.0, 1.0, 1.0, 1.0, 0.0],
        [-1.0, 2.0, 0.5, -0.5, 0.1],
    ]
    cases.append(
        graph_case(
            "neuron_rows",
            "three rows of leaf values in one call; results row by row",
            g,
            [
                evaluate(
                    {"selection": "SELECTION_LEAVES", "rows": rows},
                    expect_ok(g.nodes, leaves, rows=rows),
                )
            ],
        )
    )

    outputs, seeds = [ids["o"], ids["n"]], [2.0, -1.0]
    nodes = [ids["x1"], ids["o"], ids["x1"]]
    cases.append(
        graph_case(
            "outputs_seeds_and_selection",
            "two seeded outputs (2 do + -1 dn) and a selection that repeats a node",
            g,
            [
                evaluate(
                    {
                        "outputs": outputs,
                        "seeds": seeds,
                        "selection": "SELECTION_NODES",
                        "nodes": nodes,
                    },
                    expect_ok(g.nodes, nodes, outputs, seeds),
                )
            ],
        )
    )

    new_leaves = [1.0, -2.0, 0.5, 0.25, -0.3]
    cases.append(
        graph_case(
            "plan_digest_reuse",
            "the second call sends only the first call's 16-byte plan_digest and new leaf "
            "values; a digest the server never issued is NOT_FOUND",
            g,
            [
                evaluate({"selection": "SELECTION_ALL"}, expect),
                evaluate(
                    {"selection": "SELECTION_ALL", "plan": "previous", "leaf_values": new_leaves},
                    expect_ok(g.nodes, every, rows=[new_leaves]),
                ),
                evaluate(
                    {"plan_digest": "ff" * 16, "leaf_values": new_leaves},
                    expect_error("NOT_FOUND", None, None, "send the whole graph again"),
                ),
            ],
        )
    )

    g, ids = everyday_ops()
    every = list(range(len(g.nodes)))
    cases.append(
        graph_case(
            "standard_ops",
            "exp, log, sigmoid, sin, div, sub, neg and a variadic sum",
            g,
            [evaluate({"selection": "SELECTION_ALL"}, expect_ok(g.nodes, every))],
        )
    )

    cases.append(
        {
            "name": "chain_300k_stream",
            "about": "a 300,000-node chain through EvaluateStream, in 65,536-node chunks",
            "graph": {"chain": chain_rule()},
            "calls": [
                evaluate(
                    {"selection": "SELECTION_ALL", "chunk_size": CHUNK},
                    chain_expectation(),
                    rpc="EvaluateStream",
                )
            ],
        }
    )
    return cases


def error_cases() -> list[dict]:
    cases = []
    g = Nodes()
    g.leaf(1.0, "x")
    g.op("nosuch", 0, label="y")
    cases.append(
        graph_case(
            "unknown_op",
            "an op the server does not have; the message quotes the node's label",
            g,
            [
                evaluate(
                    {},
                    expect_error(
                        "INVALID_ARGUMENT", "graph.op_names[0]", 1, "node 1 ('y')", "'nosuch'"
                    ),
                )
            ],
        )
    )
    forward_reference = {
        "op_names": ["tanh"],
        "node_ops": [0, 1, 1],
        "input_counts": [0, 1, 1],
        "input_ids": [2, 0],
        "leaf_values": [1.0],
        "labels": ["x", "t1", "t2"],
    }
    cases.append(
        raw_case(
            "forward_reference",
            "node 1 reads node 2 (input_ids[0]): ids must be topological",
            forward_reference,
            [
                evaluate(
                    {},
                    expect_error(
                        "INVALID_ARGUMENT", "graph.input_ids[0]", 1, "node 1 ('t1')", "not earlier"
                    ),
                )
            ],
        )
    )
    duplicate = {
        "op_names": ["tanh", "tanh"],
        "node_ops": [0, 1],
        "input_counts": [0, 1],
        "input_ids": [0],
        "leaf_values": [1.0],
    }
    cases.append(
        raw_case(
            "op_name_listed_twice",
            "op_names lists each op once",
            duplicate,
            [evaluate({}, expect_error("INVALID_ARGUMENT", "graph.op_names[1]", None, "twice"))],
        )
    )
    arity = {
        "op_names": ["mul"],
        "node_ops": [0, 1],
        "input_counts": [0, 1],
        "input_ids": [0],
        "leaf_values": [2.0],
    }
    cases.append(
        raw_case(
            "wrong_arity",
            "mul with one input",
            arity,
            [evaluate({}, expect_error("INVALID_ARGUMENT", "graph.input_counts[1]", 1, "takes 2"))],
        )
    )
    g = Nodes()
    g.op("log", g.leaf(-1.0, "x"), label="log(x)")
    cases.append(
        graph_case(
            "outside_the_domain",
            "log(-1): a value outside the op's domain is the client's error",
            g,
            [
                evaluate(
                    {},
                    expect_error(
                        "INVALID_ARGUMENT", "graph.leaf_values", 1, "node 1 ('log(x)')", "log"
                    ),
                )
            ],
        )
    )
    g = Nodes()
    g.op("exp", g.leaf(1000.0, "x"), label="exp(x)")
    cases.append(
        graph_case(
            "overflow",
            "exp(1000) overflows: INVALID_ARGUMENT unless allow_non_finite",
            g,
            [
                evaluate(
                    {},
                    expect_error(
                        "INVALID_ARGUMENT",
                        "graph.node_ops[1]",
                        1,
                        "node 1 ('exp(x)')",
                        "allow_non_finite",
                    ),
                )
            ],
        )
    )
    g, ids = neuron()
    cases.append(
        graph_case(
            "bad_requests",
            "seeds that do not match the outputs; nodes listed with SELECTION_LEAVES",
            g,
            [
                evaluate(
                    {"outputs": [ids["o"]], "seeds": [1.0, 2.0]},
                    expect_error("INVALID_ARGUMENT", "seeds", None, "seeds"),
                ),
                evaluate(
                    {"selection": "SELECTION_LEAVES", "nodes": [ids["o"]]},
                    expect_error("INVALID_ARGUMENT", "nodes", None, "SELECTION_LEAVES"),
                ),
            ],
        )
    )
    g = Nodes()
    x = g.leaf(1.0, "x")
    g.op("sum", *[x] * (MAX_FAN_IN + 1), label="wide")
    cases.append(
        graph_case(
            "beyond_a_limit",
            f"a node reading {MAX_FAN_IN + 1} inputs on a server with max-fan-in {MAX_FAN_IN}",
            g,
            [
                evaluate(
                    {},
                    expect_error("RESOURCE_EXHAUSTED", "graph.input_counts[1]", 1, "max-fan-in"),
                )
            ],
        )
    )
    g = Nodes()
    g.op("conformance_fail", g.leaf(1.0, "x"), label="boom")
    cases.append(
        graph_case(
            "op_plugin_failure",
            "an op plugin that raises: INTERNAL with the op, the node and an error id",
            g,
            [
                evaluate(
                    {},
                    expect_error(
                        "INTERNAL",
                        None,
                        1,
                        "node 1 ('boom'): op 'conformance_fail'",
                        "error id",
                        "server log",
                    ),
                )
            ],
        )
    )
    g, _ = neuron()
    cases.append(
        graph_case(
            "authentication",
            "a wrong bearer token, or none, on a server that requires one",
            g,
            [
                evaluate({"token": "wrong"}, expect_error("UNAUTHENTICATED", None, None)),
                evaluate({"token": ""}, expect_error("UNAUTHENTICATED", None, None)),
            ],
        )
    )
    cases.append(
        {
            "name": "deadline_and_cancel",
            "about": "the 300,000-node chain with a 1 ms deadline, and cancelled by the "
            "client after its first chunk",
            "graph": {"chain": chain_rule()},
            "calls": [
                evaluate(
                    {"deadline_ms": 1},
                    expect_error("DEADLINE_EXCEEDED", None, None),
                    rpc="EvaluateStream",
                ),
                evaluate(
                    {"chunk_size": 1000, "cancel_after_chunks": 1},
                    expect_error("CANCELLED", None, None),
                    rpc="EvaluateStream",
                ),
            ],
        }
    )
    g, _ = neuron()
    cases.append(
        graph_case(
            "no_server",
            "nothing listens at the target: UNAVAILABLE",
            g,
            [evaluate({"target": "unreachable"}, expect_error("UNAVAILABLE", None, None))],
        )
    )
    return cases


def list_ops_case() -> dict:
    return {
        "name": "list_ops",
        "about": "ListOps lists the standard ops (and the conformance plugin's), sorted",
        "calls": [
            {
                "rpc": "ListOps",
                "request": {},
                "expect": {
                    "status": "OK",
                    "ops": [
                        {"name": "add", "arity": 2, "variadic": False},
                        {"name": "conformance_fail", "arity": 1, "variadic": False},
                        {"name": "sum", "arity": 0, "variadic": True},
                        {"name": "tanh", "arity": 1, "variadic": False},
                    ],
                },
            }
        ],
    }


def suite() -> dict:
    return {
        "format": 1,
        "about": "gradserve conformance cases; see conformance/README.md. Generated by "
        "conformance/oracle.py: do not edit by hand.",
        "server": {
            "flags": [
                "--workers",
                "1",
                "--max-fan-in",
                str(MAX_FAN_IN),
                "--auth-token",
                TOKEN,
                "--isolation-workers",
                "0",
            ],
            "pythonpath": "plugin",
            "token": TOKEN,
        },
        "tolerance": {"absolute": 1e-9, "relative": 1e-9},
        "cases": [*number_cases(), *error_cases(), list_ops_case()],
    }


def write(path: Path = CASES) -> None:
    path.write_text(json.dumps(suite(), indent=1) + "\n")


if __name__ == "__main__":
    write()
