"""Property tests with hypothesis: random valid graphs against an independent reference,
corrupted graphs and random bytes against the server (always a clean status, never a hang).

The graphs use all 19 standard ops (and, on a server that isolates it, the example plugin's
erf, gelu and logaddexp), with inputs inside each op's domain and away from its kinks, from
a few nodes to 3,500, with chains and wide levels, one to four rows, random outputs, seeds
and selections, through Evaluate and EvaluateStream: every evaluation path runs (small
calls, looped and compiled, scalar stretches, groups, batch rows, isolation workers). The
reference is ``fuzz_reference``: Python floats and ``math``.

Each property runs GRADSERVE_FUZZ_EXAMPLES examples (default 100, the figure
docs/running-safely.md states; all properties together take about ten seconds); a long run is
``GRADSERVE_FUZZ_EXAMPLES=20000 uv run pytest tests/test_fuzz_graphs.py``. A graph's
structure comes from a seeded ``random.Random`` (hypothesis draws the seed, the size and
the shape), which keeps a 3,000-node example cheap to draw; shrinking then shrinks the size.
"""

import os
import random
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import grpc
import numpy as np
import pytest
from fuzz_reference import SPECIAL, STANDARD, random_graph, reference
from hardening import violations
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from gradserve.server.engine.evaluate import evaluate
from gradserve.server.engine.plan import Stretch, compile_graph
from gradserve.server.engine.small_call import LOOP_NODES, MAX_NODES
from gradserve.server.registry import discovered_entry_points, load_registry
from gradserve.server.service.app import running_server
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

EXAMPLES = int(os.environ.get("GRADSERVE_FUZZ_EXAMPLES", "100"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
RTOL = 1e-9  # relative to the node's value, or to the largest one (sums cancel)


def test_the_reference_covers_every_standard_op(registry):
    standard = {n for n, op in registry.items() if op.distribution == "gradserve-ops-core"}
    assert set(STANDARD) == standard and len(STANDARD) == 19


class Case:
    """A random graph with its rows, outputs, seeds and selection, and the reference's
    results for every node, shaped (rows, nodes)."""

    def __init__(self, draw, ops: dict) -> None:
        size = draw(
            st.one_of(
                st.integers(2, LOOP_NODES),
                st.integers(LOOP_NODES + 1, MAX_NODES),
                st.integers(MAX_NODES + 1, 3500),
            )
        )
        self.rows = draw(st.sampled_from([1, 1, 1, 2, 3, 4]))
        chain_share = draw(st.sampled_from([0.0, 0.3, 0.9]))
        rng = random.Random(draw(st.integers(0, 2**32 - 1)))
        self.random_graph = random_graph(rng, ops, size, self.rows, chain_share)
        self.graph = self.random_graph.graph
        n = len(self.graph.node_ops)
        ids = st.integers(0, n - 1)
        self.outputs = draw(st.lists(ids, max_size=4, unique=True))
        count = len(self.outputs)
        seeds = draw(st.lists(st.floats(-3, 3), min_size=count, max_size=count))
        self.seeds = seeds if draw(st.sampled_from([True, True, False])) else []
        self.selection = draw(st.sampled_from(["all", "leaves", "nodes"]))
        self.nodes = (
            draw(st.lists(ids, min_size=1, max_size=20, unique=True))
            if self.selection == "nodes"
            else []
        )
        outputs = self.outputs or [n - 1]
        seeds = self.seeds or [1.0] * len(outputs)
        values, grads = [], []
        for row in self.random_graph.rows:
            v, g, inside = reference(self.random_graph, ops, row, outputs, seeds)
            assume(inside)  # a row's 1e-4 nudge took an input out of a domain: rare
            values.append(v)
            grads.append(g)
        self.values, self.grads = np.array(values), np.array(grads)
        if self.rows > 1:
            event("rows > 1")
        elif n <= LOOP_NODES:
            event("one row, up to LOOP_NODES nodes")
        else:
            event("one row, up to MAX_NODES nodes" if n <= MAX_NODES else "one row, more")
        assume(np.isfinite(self.grads).all() and np.abs(self.grads).max() < 1e250)

    def selected(self) -> list[int]:
        if self.selection == "nodes":
            return self.nodes
        ops = self.graph.node_ops
        return (
            [i for i in range(len(ops)) if not ops[i]]
            if self.selection == "leaves"
            else list(range(len(ops)))
        )

    def request(self) -> pb.EvaluateRequest:
        graph = self.graph.proto()
        graph.ClearField("leaf_values")
        graph.leaf_values.extend(v for row in self.random_graph.rows for v in row)
        selection = {
            "all": pb.SELECTION_ALL,
            "leaves": pb.SELECTION_LEAVES,
            "nodes": pb.SELECTION_UNSPECIFIED,
        }
        return pb.EvaluateRequest(
            graph=graph,
            outputs=self.outputs,
            seeds=self.seeds,
            selection=selection[self.selection],
            nodes=self.nodes,
            rows=self.rows if self.rows > 1 else 0,
        )

    def check(self, ids, values, grads) -> None:
        """values and grads shaped (rows, len(ids)), against the reference."""
        assert list(ids) == self.selected()
        _close(values, self.values[:, ids])
        _close(grads, self.grads[:, ids])


def _close(got, expected) -> None:
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * scale)


@st.composite
def cases(draw, ops) -> Case:
    return Case(draw, ops)


@fuzz
@given(cases(STANDARD))
def test_the_engine_agrees_with_a_reference_evaluation(ops, case):
    plan = compile_graph(case.graph.arrays(), ops)
    leaves = np.array(case.random_graph.rows)
    outputs = case.outputs or [len(case.graph.node_ops) - 1]
    seeds = case.seeds or [1.0] * len(outputs)
    values, grads = evaluate(
        plan,
        leaves if case.rows > 1 else leaves[0],
        np.array(outputs),
        np.array(seeds),
        allow_non_finite=False,
    )
    _close(np.reshape(values.T, (case.rows, -1)), case.values)
    _close(np.reshape(grads.T, (case.rows, -1)), case.grads)


def _ask(stub, case: Case, streamed: bool, chunk_size: int):
    """The reply's ids, values and grads shaped (rows, ids), through either method."""
    request = case.request()
    if not streamed:
        reply = stub.Evaluate(request, timeout=60)
        ids, values, grads = list(reply.node_ids), reply.values, reply.grads
    else:
        request.chunk_size = chunk_size
        chunks = list(stub.EvaluateStream(request, timeout=60))
        ids = [i for c in chunks for i in c.node_ids]
        # Within a chunk the layout is row by row; chunks follow each other.
        values = np.concatenate([np.reshape(c.values, (case.rows, -1)) for c in chunks], axis=1)
        grads = np.concatenate([np.reshape(c.grads, (case.rows, -1)) for c in chunks], axis=1)
    return ids, np.reshape(values, (case.rows, -1)), np.reshape(grads, (case.rows, -1))


@fuzz
@given(cases(STANDARD), st.booleans(), st.sampled_from([0, 1, 7, 1000]))
def test_the_server_agrees_with_a_reference_evaluation(stub, case, streamed, chunk_size):
    """Each request twice: a structure's second call may run as a compiled program."""
    case.check(*_ask(stub, case, streamed, chunk_size))
    case.check(*_ask(stub, case, not streamed, chunk_size))


SPECIAL_SOURCE = Path(__file__).resolve().parents[1] / "ops_plugins" / "special"


@pytest.fixture(scope="module")
def isolating_stub(tmp_path_factory):
    """A server with the example plugin (gradserve-ops-special) untrusted, so that graphs
    using its ops run in an isolation worker. Unless the plugin is installed, its source
    folder and a .dist-info naming its entry points go on sys.path (the spawned worker
    inherits sys.path), and are taken off again afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        try:
            distribution("gradserve-ops-special")
        except PackageNotFoundError:
            root = tmp_path_factory.mktemp("special")
            info = root / "gradserve_ops_special-0.1.0.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(
                "Metadata-Version: 2.1\nName: gradserve-ops-special\nVersion: 0.1.0\n"
            )
            entries = "".join(f"{name} = gradserve_ops_special:{name}\n" for name in SPECIAL)
            (info / "entry_points.txt").write_text(f"[gradserve.ops]\n{entries}")
            patch.syspath_prepend(str(SPECIAL_SOURCE))
            patch.syspath_prepend(str(root))
        discovered_entry_points.cache_clear()
        try:
            registry = load_registry()
            assert set(SPECIAL) <= set(registry)
            with (
                running_server(registry, isolation_workers=1) as server,
                grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
            ):
                assert server.isolation is not None
                yield pb_grpc.GradientServiceStub(channel)
        finally:
            discovered_entry_points.cache_clear()


@fuzz
@given(cases({**STANDARD, **SPECIAL}), st.booleans())
def test_isolated_plugin_ops_agree_with_a_reference_evaluation(isolating_stub, case, streamed):
    case.check(*_ask(isolating_stub, case, streamed, 0))


HUGE = 2**32 - 1
CLEAN = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}


@st.composite
def corrupted_requests(draw) -> pb.EvaluateRequest:
    size = draw(st.integers(2, 300))
    graph = random_graph(random.Random(draw(st.integers(0, 2**32 - 1))), STANDARD, size, 1, 0.3)
    request = pb.EvaluateRequest(graph=graph.graph.proto())
    graph = request.graph
    repeated = {
        "graph.node_ops": graph.node_ops,
        "graph.input_counts": graph.input_counts,
        "graph.input_ids": graph.input_ids,
        "graph.leaf_values": graph.leaf_values,
        "graph.labels": graph.labels,
        "outputs": request.outputs,
        "seeds": request.seeds,
        "nodes": request.nodes,
    }
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(repeated)))
        field = repeated[name]
        action = draw(st.sampled_from(["set", "append", "drop"]))
        if name == "graph.labels":
            value = draw(st.text(max_size=5))
        elif name in ("graph.leaf_values", "seeds"):
            value = draw(st.floats())  # NaN and Inf included
        else:
            value = draw(st.sampled_from([0, 1, 2, 7, len(graph.node_ops), HUGE]))
        if action == "drop" and len(field):
            del field[draw(st.integers(0, len(field) - 1))]
        elif action == "set" and len(field):
            field[draw(st.integers(0, len(field) - 1))] = value
        else:
            field.append(value)
    if draw(st.booleans()):
        graph.op_names.append(draw(st.sampled_from(["nosuch", "", "add", "log"])))
    request.selection = draw(st.sampled_from([0, 1, 2, 3, 99]))
    request.rows = draw(st.sampled_from([0, 0, 1, 2, 3]))
    request.allow_non_finite = draw(st.booleans())
    return request


@fuzz
@given(corrupted_requests())
def test_corrupted_requests_get_a_clean_status(stub, request):
    for call in (stub.Evaluate, lambda r, timeout: list(stub.EvaluateStream(r, timeout=timeout))):
        try:
            call(request, timeout=10)
        except grpc.RpcError as error:
            assert error.code() in CLEAN, (error.code(), error.details())
            assert "Traceback" not in error.details()
            assert violations(error)


@fuzz
@given(st.binary(max_size=300))
def test_random_bytes_as_a_request_get_a_clean_status(channel, data):
    for method in ("Evaluate", "ListOps"):
        call = channel.unary_unary(f"/gradserve.v1.GradientService/{method}")
        try:
            call(data, timeout=10)
        except grpc.RpcError as error:
            assert error.code() in CLEAN, (error.code(), error.details())
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                assert violations(error)


def test_undecodable_bytes_are_invalid_argument(channel):
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/gradserve.v1.GradientService/Evaluate")(b"\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(caught.value)] == ["request"]


def test_the_fuzzed_graphs_reach_every_path(ops):
    """The generator makes what the properties claim to cover: chains long enough for
    scalar stretches, graphs on both sides of the small-call limit, every op."""
    rng = random.Random(7)
    seen_ops, stretches, sizes = set(), 0, []
    for size in (50, 400, MAX_NODES + 500):
        for chain_share in (0.0, 0.9):
            rg = random_graph(rng, STANDARD, size, 1, chain_share)
            sizes.append(len(rg.graph.node_ops))
            seen_ops |= set(rg.graph.op_names)
            plan = compile_graph(rg.graph.arrays(), ops)
            stretches += sum(isinstance(step, Stretch) for step in plan.steps)
    assert seen_ops == set(STANDARD)
    assert stretches > 0
    assert min(sizes) <= LOOP_NODES and max(sizes) > MAX_NODES
