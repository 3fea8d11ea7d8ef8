"""Small graphs with one row run on floats from start to end (small_call.py): the results of
closed forms and finite differences, the general path's errors for anything unusual, and the
path really taken."""

import math

import grpc
import numpy as np
import pytest
from graphs import GraphBuilder, neuron, notebook_first_example
from grpc_status import rpc_status
from servers import serving

from gradserve.ops import Op
from gradserve.server.engine import run as engine_entry
from gradserve.server.engine import small_call
from gradserve.server.engine.plan import compile_graph
from gradserve.server.registry import LoadedOp
from gradserve.v1 import gradserve_pb2 as pb


@pytest.fixture
def general_path_calls(monkeypatch):
    """How many calls reached the general path (the engine's run)."""
    calls = []
    general = engine_entry.run

    def counted(*args, **kwargs):
        calls.append(1)
        return general(*args, **kwargs)

    monkeypatch.setattr(engine_entry, "run", counted)
    return calls


def request(g: GraphBuilder, **fields) -> pb.EvaluateRequest:
    fields.setdefault("selection", pb.SELECTION_ALL)
    return pb.EvaluateRequest(graph=g.proto(), **fields)


def test_the_neuron_matches_its_closed_form(stub, general_path_calls):
    g, ids = neuron()
    reply = stub.Evaluate(request(g, selection=pb.SELECTION_LEAVES))
    assert not general_path_calls
    assert list(reply.node_ids) == [ids[k] for k in ("x1", "x2", "w1", "w2", "b")]
    x1, x2, w1, w2, b = 2.0, 0.0, -3.0, 1.0, 6.8813735870195432
    o = math.tanh(x1 * w1 + x2 * w2 + b)
    do_dn = 1.0 - o * o  # 0.5 at the notebook's values
    expected = [w1 * do_dn, w2 * do_dn, x1 * do_dn, x2 * do_dn, do_dn]
    assert list(reply.grads) == pytest.approx(expected, rel=1e-13, abs=1e-15)
    assert list(reply.grads) == pytest.approx([-1.5, 0.5, 1.0, 0.0, 0.5], rel=1e-13)
    assert list(reply.values) == [x1, x2, w1, w2, b]
    assert reply.rows == 1 and len(reply.plan_digest) == 16


def test_the_notebook_expression_matches_its_closed_form(stub, general_path_calls):
    g, _ = notebook_first_example()
    reply = stub.Evaluate(request(g))
    assert not general_path_calls
    # e = (a + b) * d: de/da = de/db = d = 10, de/dd = a + b = 8, de/dc = 10.
    assert list(reply.values) == [5.0, 3.0, 8.0, 10.0, 80.0]
    assert list(reply.grads) == [10.0, 10.0, 10.0, 8.0, 1.0]


def test_outputs_seeds_and_chosen_nodes(stub, general_path_calls):
    g = GraphBuilder()
    x, y = g.leaf(3.0), g.leaf(-2.0)
    square = g.op("mul", x, x)  # x read twice: d/dx = 2x
    product = g.op("mul", square, y)
    total = g.op("sum", square, product, x)
    reply = stub.Evaluate(
        request(g, outputs=[product, total], seeds=[2.0, -1.0], nodes=[y, x, y], selection=0)
    )
    assert not general_path_calls
    assert list(reply.node_ids) == [y, x, y]
    assert list(reply.values) == [-2.0, 3.0, -2.0]
    # L = 2 x^2 y - (x^2 + x^2 y + x) = x^2 y - x^2 - x
    dx, dy = 2 * 3.0 * -2.0 - 2 * 3.0 - 1.0, 9.0
    assert list(reply.grads) == [dy, dx, dy]
    assert total == 4


def test_seeds_for_the_default_output(stub, general_path_calls):
    g, _ = notebook_first_example()
    reply = stub.Evaluate(request(g, seeds=[-0.5]))
    assert not general_path_calls
    assert list(reply.grads) == [-5.0, -5.0, -5.0, -4.0, -0.5]


UNARY = {
    "tanh": math.tanh,
    "sin": math.sin,
    "cos": math.cos,
    "exp": math.exp,
    "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)),
    "softplus": lambda x: math.log1p(math.exp(x)),
    "neg": lambda x: -x,
}
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}


def random_graph(rng: np.random.Generator, nodes: int) -> tuple[GraphBuilder, list]:
    """A random graph of smooth ops, with nodes read by several others and inputs repeated
    (``x*x``), and a forward of its own for finite differences: (op, inputs) per node.
    Divisors are leaves, between 0.5 and 1.5, so that few graphs blow up."""
    g = GraphBuilder()
    recipe: list = []
    for _ in range(3):
        g.leaf(float(rng.uniform(0.5, 1.5)))
        recipe.append(None)
    while len(recipe) < nodes:
        pick = [int(rng.integers(max(0, len(recipe) - 4), len(recipe))) for _ in range(3)]
        kind = rng.integers(0, 4)
        if kind == 0:
            name = str(rng.choice(list(UNARY)))
            inputs = pick[:1]
        elif kind == 3:
            name, inputs = "mul", [pick[0], pick[0]]  # x * x
        else:
            name = str(rng.choice(list(BINARY)))
            inputs = [pick[0], int(rng.integers(0, 3)) if name == "div" else pick[1]]
        g.op(name, *inputs)
        recipe.append((name, inputs))
    return g, recipe


def forward(recipe: list, leaves: list[float]) -> list[float]:
    values, leaf = [], iter(leaves)
    for step in recipe:
        if step is None:
            values.append(next(leaf))
            continue
        name, inputs = step
        xs = [values[i] for i in inputs]
        try:
            values.append(UNARY[name](*xs) if name in UNARY else BINARY[name](*xs))
        except (ArithmeticError, ValueError):
            values.append(math.nan)  # a zero divisor or an overflow: such graphs are redrawn
    return values


def tame_random_graph(rng: np.random.Generator) -> tuple[GraphBuilder, list, list[float]]:
    """A random graph whose values all stay small (about half the draws blow up, and
    cos(e^x) and the like defeat finite differences), its recipe and its values."""
    for _ in range(1000):
        g, recipe = random_graph(rng, nodes=int(rng.integers(6, 40)))
        values = forward(recipe, g.leaf_values)
        if all(abs(v) < 20 for v in values):
            return g, recipe, values
    raise AssertionError("no random graph with small values in 1,000 draws")


@pytest.mark.parametrize("seed", range(20))
def test_random_graphs_match_central_differences(stub, general_path_calls, seed):
    g, recipe, values = tame_random_graph(np.random.default_rng(seed))
    reply = stub.Evaluate(request(g, selection=pb.SELECTION_LEAVES))
    again = stub.Evaluate(request(g, selection=pb.SELECTION_LEAVES))  # a compiled program
    assert not general_path_calls
    # The compiled program does the looped program's operations in the same order.
    assert again.SerializeToString() == reply.SerializeToString()
    for position, leaf in enumerate(g.leaf_values):
        h = 1e-6 * max(1.0, abs(leaf))
        ahead, behind = list(g.leaf_values), list(g.leaf_values)
        ahead[position] += h
        behind[position] -= h
        numeric = (forward(recipe, ahead)[-1] - forward(recipe, behind)[-1]) / (2 * h)
        assert reply.grads[position] == pytest.approx(numeric, rel=1e-5, abs=1e-5)
    assert list(reply.values) == pytest.approx(values[:3], rel=1e-15)


@pytest.fixture
def general_only(monkeypatch):
    """Call ``general_only(call)`` to make it with the small-call path switched off."""

    def run(call):
        with monkeypatch.context() as patched:
            patched.setattr(small_call, "evaluate", lambda *args: None)
            return call()

    return run


@pytest.mark.parametrize("seed", range(8))
def test_random_graphs_give_the_general_paths_results(stub, general_only, seed):
    g, recipe = random_graph(np.random.default_rng(100 + seed), nodes=60)
    if not all(abs(v) < 1e100 for v in forward(recipe, g.leaf_values)):
        pytest.skip("a random graph that overflows")
    fast = stub.Evaluate(request(g))
    general = general_only(lambda: stub.Evaluate(request(g)))
    assert fast.node_ids == general.node_ids and fast.plan_digest == general.plan_digest
    # Different libraries' tanh, sin, exp round differently by a few ulp; those differences
    # can grow through later nodes, and sums of gradients are added in another order.
    np.testing.assert_allclose(fast.values, general.values, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fast.grads, general.grads, rtol=1e-10, atol=1e-12)


def outcome(call):
    """The reply's bytes, or the error's code, details and rich status (BadRequest)."""
    try:
        reply = call()
    except grpc.RpcError as error:
        status = rpc_status.from_call(error)
        return error.code(), error.details(), status and status.SerializeToString()
    return [reply.SerializeToString()] if isinstance(reply, pb.EvaluateResponse) else reply


def graph_of(*ops: str, leaves=(0.5, 2.0)) -> GraphBuilder:
    """Leaves, then each op applied to the previous node (and the first leaf for binary)."""
    g = GraphBuilder()
    for value in leaves:
        g.leaf(value)
    for name in ops:
        last = len(g.node_ops) - 1
        g.op(name, last, 0) if name in BINARY or name in ("pow", "max") else g.op(name, last)
    return g


def with_leaf_values(g: GraphBuilder, values: list[float]) -> GraphBuilder:
    g.leaf_values = values
    return g


UNUSUAL = {
    "a NaN leaf": lambda: request(graph_of("tanh", leaves=(0.5, math.nan))),
    "an overflow in forward": lambda: request(graph_of("exp", leaves=(0.5, 800.0))),
    "an overflow in a gradient": lambda: request(
        graph_of("mul", leaves=(1e300, 1.0)), seeds=[1e10]
    ),
    "NaN passed through": lambda: request(
        graph_of("tanh", leaves=(0.5, math.inf)), allow_non_finite=True
    ),
    "outside a domain": lambda: request(graph_of("log", leaves=(0.5, -1.0))),
    "a zero divisor": lambda: request(graph_of("div", leaves=(0.0, 1.0))),
    "a negative base to a fractional power": lambda: request(graph_of("pow", leaves=(0.5, -2.0))),
    "an output out of range": lambda: request(graph_of("tanh"), outputs=[3]),
    "seeds without as many outputs": lambda: request(graph_of("tanh"), seeds=[1.0, 2.0]),
    "fewer seeds than outputs": lambda: request(graph_of("tanh"), outputs=[1, 2], seeds=[1.0]),
    "a chosen node out of range": lambda: request(graph_of("tanh"), nodes=[0, 7], selection=0),
    "an unknown selection": lambda: request(graph_of("tanh"), selection=9),
    "a negative selection": lambda: request(graph_of("tanh"), selection=-1),
    "nodes with selection LEAVES": lambda: request(
        graph_of("tanh"), nodes=[1], selection=pb.SELECTION_LEAVES
    ),
    "too few leaf values": lambda: pb.EvaluateRequest(
        graph=with_leaf_values(graph_of("tanh"), [1.0]).proto()
    ),
    "two rows": lambda: request(with_leaf_values(graph_of("sin"), [0.1, 0.2, 0.3, 0.4]), rows=2),
    "an unknown plan digest": lambda: pb.EvaluateRequest(plan_digest=b"x" * 16),
    "tanh past where cosh overflows": lambda: request(graph_of("tanh", leaves=(0.5, 750.0))),
}


@pytest.mark.parametrize("case", UNUSUAL)
def test_anything_unusual_gets_the_general_paths_answer(stub, general_only, case):
    general = outcome(lambda: general_only(lambda: stub.Evaluate(UNUSUAL[case]())))
    fast = outcome(lambda: stub.Evaluate(UNUSUAL[case]()))
    assert fast == general
    compiled = outcome(lambda: stub.Evaluate(UNUSUAL[case]()))  # the structure's second call
    assert compiled == general
    chunks = outcome(lambda: list(stub.EvaluateStream(UNUSUAL[case]())))
    assert chunks == outcome(
        lambda: general_only(lambda: list(stub.EvaluateStream(UNUSUAL[case]())))
    )


def test_the_unusual_cases_do_fail_or_pass_through(stub):
    # So that the comparison above compares errors, not two successes.
    for case in UNUSUAL:
        result = outcome(lambda case=case: stub.Evaluate(UNUSUAL[case]()))
        passes = case in ("NaN passed through", "tanh past where cosh overflows", "two rows")
        assert isinstance(result, list) == passes, case


def _sin_backward(g, y, x):
    return (g * np.cos(x),)


def _raise_value_error(*args):
    raise ValueError("not on floats")


@pytest.fixture
def custom_registry(registry):
    def loaded(op: Op) -> LoadedOp:
        return LoadedOp(op, f"{op.name} = tests:{op.name}", "tests", "0")

    ops = {
        "sin_raising": Op(
            "sin_raising",
            1,
            np.sin,
            _sin_backward,
            scalar=math.sin,
            scalar_backward=_raise_value_error,
        ),
        "sin_arrays": Op("sin_arrays", 1, np.sin, _sin_backward, scalar=math.sin),
        "sin_listing": Op(
            "sin_listing",
            1,
            np.sin,
            _sin_backward,
            scalar=math.sin,
            scalar_backward=lambda g, y, x: (g * math.cos(x), 0.0),  # one too many
        ),
    }
    ops["sum_listing"] = Op(  # variadic, and its scalar backward gives one too many
        "sum_listing",
        None,
        lambda *xs: sum(xs),
        lambda g, y, *xs: tuple(g for _ in xs),
        scalar=lambda *xs: math.fsum(xs),
        scalar_backward=lambda g, y, *xs: (g,) * (len(xs) + 1),
    )
    ops["inverse_of_positive"] = Op(
        "inverse_of_positive",
        1,
        np.reciprocal,
        lambda g, y, x: (-g / (x * x),),
        domain=lambda x: x > 0,
        scalar=lambda x: 1.0 / x,
        scalar_backward=lambda g, y, x: (-g / (x * x),),
    )
    ops["inverse_inside_unit"] = Op(  # a domain of NumPy calls: it does not trace
        "inverse_inside_unit",
        1,
        np.reciprocal,
        lambda g, y, x: (-g / (x * x),),
        domain=lambda x: np.abs(x) < 1.0,
        scalar=lambda x: 1.0 / x,
        scalar_backward=lambda g, y, x: (-g / (x * x),),
    )
    ops["ratio_to_positive"] = Op(
        "ratio_to_positive",
        2,
        np.divide,
        lambda g, y, a, b: (g / b, -g * a / (b * b)),
        domain=lambda a, b: b > 0,
        scalar=lambda a, b: a / b,
        scalar_backward=lambda g, y, a, b: (g / b, -g * a / (b * b)),
    )
    return {**registry, **{name: loaded(op) for name, op in ops.items()}}


@pytest.mark.parametrize("inputs", [3, small_call.UNPACKED + 4])
def test_too_many_gradients_from_a_variadic_scalar_backward(
    custom_registry, general_path_calls, inputs
):
    """Looped or compiled, with the gradients unpacked or indexed, a scalar backward that
    gives one gradient too many sends the call to the arrays (d(sum)/dx = 1 each)."""
    g = GraphBuilder()
    xs = [g.leaf(0.25 * k) for k in range(inputs)]
    g.op("tanh", g.op("sum_listing", *xs))
    expected = 1 - math.tanh(math.fsum(0.25 * k for k in range(inputs))) ** 2
    with serving(custom_registry) as custom:
        for call in (1, 2, 3):  # looped, compiling, compiled
            reply = custom.Evaluate(request(g, selection=pb.SELECTION_LEAVES))
            assert general_path_calls == [1] * call
            assert list(reply.grads) == pytest.approx([expected] * inputs, rel=1e-13)


def test_a_domain_the_scalar_functions_do_not_enforce(custom_registry, general_only):
    # 1/x on x > 0 only: math computes 1/-2 happily, so only the domain check catches it.
    g = GraphBuilder()
    g.op("inverse_of_positive", g.op("neg", g.leaf(2.0)))
    with serving(custom_registry) as custom:
        fast = outcome(lambda: custom.Evaluate(request(g)))
        assert fast == outcome(lambda: general_only(lambda: custom.Evaluate(request(g))))
    assert fast[0] == grpc.StatusCode.INVALID_ARGUMENT and "not defined at (-2.0)" in fast[1]
    g.leaf_values = [-2.0]
    with serving(custom_registry) as custom:
        assert list(custom.Evaluate(request(g)).grads) == [0.25, -0.25, 1.0]  # d(1/-x)/dx = 1/x^2


def test_a_compiled_program_checks_a_traced_domain_inline(ops):
    """pow's domain is written with operators and np.round: a compiled program checks it
    as float code (no array check left), a looped one on arrays; outside it, the compiled
    forward gives None (the general path then reports it, as in UNUSUAL above)."""
    plan = compile_graph(graph_of("pow").arrays(), ops)
    looped, compiled = small_call.program_of(plan), small_call.program_of(plan, compiled=True)
    assert len(looped.domains) == 1 and compiled.domains == []
    # node 2 is node 1 to the power of node 0
    assert compiled.forward([0.5, 4.0]) == [0.5, 4.0, 2.0]
    assert compiled.forward([2.0, -4.0]) == [2.0, -4.0, 16.0]  # an integer power of x < 0
    assert compiled.forward([0.5, -4.0]) is None
    assert compiled.forward([-1.0, 0.0]) is None  # 0 to a negative power


@pytest.mark.parametrize(("x", "inside"), [(0.5, True), (2.0, False)])
def test_a_domain_that_does_not_trace_is_checked_on_arrays_by_every_program(
    custom_registry, general_path_calls, x, inside
):
    """1/x on |x| < 1 only, a domain of NumPy calls: the compiled program keeps it as an
    array check, and only that check catches 1/2 (math computes it happily)."""
    g = GraphBuilder()
    g.op("inverse_inside_unit", g.leaf(x))
    with serving(custom_registry) as custom:
        for call in (1, 2, 3):  # looped, compiling, compiled
            if inside:
                reply = custom.Evaluate(request(g))
                assert general_path_calls == []
                assert list(reply.values) == [0.5, 2.0] and list(reply.grads) == [-4.0, 1.0]
            else:
                result = outcome(lambda: custom.Evaluate(request(g)))
                assert len(general_path_calls) == call
                assert result[0] == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(("divisor", "inside"), [(5.0, True), (-5.0, False)])
def test_a_two_input_domain_sees_each_node_s_own_inputs(
    custom_registry, general_path_calls, divisor, inside
):
    """Two nodes of a two-input op, each checked with its own inputs in their places: the
    second node's numerator is negative, which a mix-up of nodes and inputs would check
    as a divisor. Inside its domain the call stays on floats, on every program."""
    g = GraphBuilder()
    g.op("ratio_to_positive", g.leaf(1.0), g.leaf(2.0))
    g.op("ratio_to_positive", g.leaf(-3.0), g.leaf(divisor))
    with serving(custom_registry) as custom:
        for call in (1, 2, 3):  # looped, compiling, compiled
            if inside:
                reply = custom.Evaluate(request(g))
                assert general_path_calls == []
                assert list(reply.values) == [1.0, 2.0, 0.5, -3.0, 5.0, -0.6]
                assert list(reply.grads) == [0, 0, 0, 1 / 5, 3 / 25, 1]  # of -3 / 5, the output
            else:
                result = outcome(lambda: custom.Evaluate(request(g)))
                assert len(general_path_calls) == call
                assert result[0] == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("name", ["sin_raising", "sin_arrays", "sin_listing"])
def test_ops_without_a_usable_scalar_backward_run_on_arrays(
    custom_registry, general_path_calls, name
):
    g = GraphBuilder()
    x = g.leaf(0.3)
    g.op(name, g.op("tanh", x))
    with serving(custom_registry) as custom:
        # The first call, the second (which tries to compile), a third (which knows it cannot)
        replies = [custom.Evaluate(request(g, selection=pb.SELECTION_LEAVES)) for _ in range(3)]
    assert general_path_calls == [1, 1, 1]
    t = math.tanh(0.3)
    for reply in replies:
        assert reply.grads[0] == pytest.approx(math.cos(t) * (1 - t * t), rel=1e-13)


def test_large_graphs_and_batches_take_the_general_path(stub, general_path_calls):
    g = graph_of(*["sin"] * small_call.LOOP_NODES)  # 2 leaves: LOOP_NODES + 2 nodes
    stub.Evaluate(request(g))
    assert general_path_calls == [1]  # a first call above LOOP_NODES
    stub.Evaluate(request(g))
    assert general_path_calls == [1]  # the second call: a compiled program
    g = graph_of(*["sin"] * (small_call.LOOP_NODES - 2))
    stub.Evaluate(request(g))
    assert general_path_calls == [1]  # exactly LOOP_NODES nodes: the loop from the start
    too_large = graph_of(*["sin"] * (small_call.MAX_NODES - 1))
    stub.Evaluate(request(too_large))
    stub.Evaluate(request(too_large))
    assert general_path_calls == [1, 1, 1]
    stub.Evaluate(request(with_leaf_values(g, [0.1, 0.2, 0.3, 0.4]), rows=2))
    assert general_path_calls == [1, 1, 1, 1]


def recurrence(steps: int) -> tuple[GraphBuilder, list]:
    """y[k+1] = tanh(w * y[k] + 0.5 * y[k-1] - b), a long graph of inline (mul, add, sub) and
    called (tanh) ops, with its recipe for ``forward``."""
    g = GraphBuilder()
    recipe: list = []
    for value in (0.3, -0.2, 0.9, 0.5, 0.1):  # y0, y1, w, half, b
        g.leaf(value)
        recipe.append(None)

    def op(name, *inputs):
        recipe.append((name, list(inputs)))
        return g.op(name, *inputs)

    before, last = 0, 1
    for _ in range(steps):
        total = op("add", op("mul", 2, last), op("mul", before, 3))
        before, last = last, op("tanh", op("sub", total, 4))
    return g, recipe


def test_a_compiled_program_of_a_thousand_nodes(stub, general_path_calls, general_only):
    g, recipe = recurrence(250)  # 1,255 nodes
    assert small_call.LOOP_NODES < len(recipe) <= small_call.MAX_NODES
    first = stub.Evaluate(request(g, selection=pb.SELECTION_LEAVES))
    assert general_path_calls == [1]
    compiled = stub.Evaluate(request(g, selection=pb.SELECTION_LEAVES))
    assert general_path_calls == [1]
    # The engine rounds tanh as NumPy does; the compiled program, as math does.
    np.testing.assert_allclose(compiled.values, first.values, rtol=1e-13)
    np.testing.assert_allclose(compiled.grads, first.grads, rtol=1e-9, atol=1e-12)
    for position, leaf in enumerate(g.leaf_values):  # and against central differences
        h = 1e-6
        ahead, behind = list(g.leaf_values), list(g.leaf_values)
        ahead[position] += h
        behind[position] -= h
        numeric = (forward(recipe, ahead)[-1] - forward(recipe, behind)[-1]) / (2 * h)
        assert compiled.grads[position] == pytest.approx(numeric, rel=1e-5, abs=1e-6), leaf


def test_a_stream_of_small_chunks(stub, general_path_calls):
    g, _ = neuron()
    chunks = list(stub.EvaluateStream(request(g, chunk_size=4)))
    assert not general_path_calls
    assert [len(c.node_ids) for c in chunks] == [4, 4, 2]
    assert all(c.total_nodes == 10 and c.rows == 1 for c in chunks)
    assert [v for c in chunks for v in c.grads][:5] == pytest.approx([-1.5, 0.5, 1.0, 0.0, 0.5])


@pytest.mark.parametrize("chunk_size", [0, 7])
def test_a_repeated_selection_streams_the_general_paths_bytes(
    stub, general_path_calls, general_only, chunk_size
):
    """Chosen nodes, repeated past one chunk of results (65,536 in one row): the small-call
    path gathers each chunk's results as it sends it (``Answer.part``), and the chunks are
    the general path's, byte for byte; an Evaluate of the same selection too. The ops are
    exact in floats and in NumPy alike (products and sums)."""
    g = graph_of("mul", "add", "neg", leaves=(0.75, -2.5))
    chosen = pb.EvaluateRequest(
        graph=g.proto(), nodes=[3, 0, 4, 3, 1] * 30_000, chunk_size=chunk_size
    )
    fast = [c.SerializeToString() for c in stub.EvaluateStream(chosen)]
    fast_reply = stub.Evaluate(chosen).SerializeToString()
    assert not general_path_calls
    general = general_only(lambda: [c.SerializeToString() for c in stub.EvaluateStream(chosen)])
    assert general_path_calls
    assert fast == general and len(fast) >= 3
    assert fast_reply == general_only(lambda: stub.Evaluate(chosen).SerializeToString())
    first = pb.GradientChunk.FromString(fast[0])
    # x = 0.75, y = -2.5; m = x * y, a = m + x, n = -a: n's gradient 1 flows back as -1.
    assert list(first.node_ids[:5]) == [3, 0, 4, 3, 1]
    assert list(first.values[:5]) == [-1.125, 0.75, 1.125, -1.125, -2.5]
    assert list(first.grads[:5]) == [-1.0, -1.0 * (1 - 2.5), 1.0, -1.0, -0.75]
