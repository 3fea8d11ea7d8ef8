"""End-to-end calls through the generated stubs against a server on port 0."""

import math
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from graphs import GraphBuilder, neuron, notebook_first_example
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hardening import SlowOp, chain
from servers import serving

from gradserve.ops import Op
from gradserve.server.registry import LoadedOp
from gradserve.server.service import compute_slots
from gradserve.server.service.app import SERVICE_NAME, running_server, start_server
from gradserve.server.service.limits import Limits
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]


def test_evaluate_the_notebook_neuron(stub):
    g, ids = neuron()
    reply = stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
    assert list(reply.node_ids) == list(range(10))
    assert reply.values[ids["o"]] == pytest.approx(math.sqrt(0.5), rel=1e-12)
    expected = {"n": 0.5, "x1": -1.5, "w1": 1.0, "x2": 0.5, "w2": 0.0, "b": 0.5}
    for name, grad in expected.items():
        assert reply.grads[ids[name]] == pytest.approx(grad, rel=1e-12, abs=1e-15), name


def test_evaluate_the_notebook_first_example(stub):
    g, ids = notebook_first_example()
    reply = stub.Evaluate(pb.EvaluateRequest(graph=g.proto(), selection=pb.SELECTION_LEAVES))
    assert list(reply.node_ids) == [ids["a"], ids["b"], ids["d"]]
    assert list(reply.values) == [5.0, 3.0, 10.0]
    assert list(reply.grads) == [10.0, 10.0, 8.0]
    reply = stub.Evaluate(pb.EvaluateRequest(graph=g.proto(), nodes=[ids["c"], ids["a"]]))
    assert list(reply.node_ids) == [ids["c"], ids["a"]]
    assert list(reply.grads) == [10.0, 10.0]


def test_outputs_and_seeds(stub):
    g = GraphBuilder()
    a, b = g.leaf(2.0), g.leaf(5.0)
    s, p = g.op("add", a, b), g.op("mul", a, b)
    request = pb.EvaluateRequest(
        graph=g.proto(), outputs=[s, p], seeds=[0.5, 2.0], selection=pb.SELECTION_LEAVES
    )
    reply = stub.Evaluate(request)
    assert list(reply.grads) == [0.5 + 2.0 * 5.0, 0.5 + 2.0 * 2.0]


def test_stream_returns_every_node_in_bounded_chunks(stub):
    g = GraphBuilder()
    y = g.leaf(0.25)
    for _ in range(999):
        y = g.op("tanh", y)
    chunks = list(stub.EvaluateStream(pb.EvaluateRequest(graph=g.proto(), chunk_size=300)))
    assert [len(c.node_ids) for c in chunks] == [300, 300, 300, 100]
    assert {c.total_nodes for c in chunks} == {1000}
    ids = np.concatenate([c.node_ids for c in chunks])
    values = np.concatenate([c.values for c in chunks])
    grads = np.concatenate([c.grads for c in chunks])
    assert ids.tolist() == list(range(1000))
    x, expected_grad = 0.25, 1.0
    for k in range(1, 1000):
        x = math.tanh(x)
        assert values[k] == pytest.approx(x, rel=1e-12)
    for k in range(999, 0, -1):
        expected_grad *= 1.0 - values[k] ** 2
    assert grads[0] == pytest.approx(expected_grad, rel=1e-9)


def test_stream_of_a_million_nodes_fits_the_default_receive_limit(server):
    # A plain channel keeps gRPC's default 4 MiB receive limit; the 1M-node result is
    # about 20 MB, so only chunking lets it through.
    g = GraphBuilder()
    y = g.leaf(1.0)
    for _ in range(1_000_000 - 1):
        y = g.op("mul", y, 0)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.GradientServiceStub(channel)
        chunks = stub.EvaluateStream(pb.EvaluateRequest(graph=g.proto()))
        received = sum(len(c.values) for c in chunks)
    assert received == 1_000_000


def test_list_ops(stub):
    ops = {op.name: op for op in stub.ListOps(pb.ListOpsRequest()).ops}
    assert {"add", "mul", "tanh"} <= set(ops)
    assert (ops["mul"].arity, ops["mul"].variadic) == (2, False)
    assert ops["tanh"].distribution == "gradserve-ops-core"
    assert "1 - tanh(x)^2" in ops["tanh"].doc


def bad_graphs():
    forward = pb.Graph(node_ops=[0, 1, 1], op_names=["tanh"], input_counts=[0, 1, 1])
    forward.input_ids.extend([2, 1])
    forward.leaf_values.append(1.0)
    unknown = pb.Graph(op_names=["nosuch"], node_ops=[0, 1], input_counts=[0, 1])
    unknown.input_ids.append(0)
    unknown.leaf_values.append(1.0)
    arity = pb.Graph(op_names=["mul"], node_ops=[0, 1], input_counts=[0, 1], input_ids=[0])
    arity.leaf_values.append(1.0)
    # The largest id the wire's uint32 can carry: the server reads it as int32 and must
    # report it as sent, not wrapped to -1.
    too_large = pb.Graph(op_names=["tanh"], node_ops=[0, 1], input_counts=[0, 1])
    too_large.input_ids.append(2**32 - 1)
    too_large.leaf_values.append(1.0)
    return {
        "forward reference": (forward, "node 1: input id 2 is not earlier"),
        "id beyond int32": (too_large, "input_ids[0] = 4294967295 is out of range"),
        "unknown op": (unknown, "node 1: unknown op 'nosuch'"),
        "wrong arity": (arity, "node 1: op 'mul' takes 2 input(s), got 1"),
        "empty": (pb.Graph(), "empty"),
    }


@pytest.mark.parametrize("case", bad_graphs())
@pytest.mark.parametrize("method", ["Evaluate", "EvaluateStream"])
def test_bad_graph_is_invalid_argument_and_the_next_call_succeeds(stub, case, method):
    graph, message = bad_graphs()[case]
    call = getattr(stub, method)
    with pytest.raises(grpc.RpcError) as caught:
        reply = call(pb.EvaluateRequest(graph=graph))
        list(reply) if method == "EvaluateStream" else reply
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    g, _ = notebook_first_example()
    assert stub.Evaluate(pb.EvaluateRequest(graph=g.proto())).values[-1] == 80.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"outputs": [9]}, "outputs[0] = 9 is out of range"),
        ({"seeds": [1.0, 2.0]}, "seeds has 2 entries but there are 1 outputs"),
        ({"nodes": [1, 5]}, "nodes[1] = 5 is out of range"),
        ({"selection": pb.SELECTION_ALL, "nodes": [1]}, "nodes must be empty"),
        ({"selection": 7}, "unknown selection 7"),
        ({"selection": -1}, "unknown selection -1"),  # an open enum takes any int32
    ],
)
def test_bad_request_options_are_invalid_argument(stub, changes, message):
    g, _ = notebook_first_example()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(graph=g.proto(), **changes))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


def test_a_failing_plugin_is_internal_without_leaking_its_error(caplog):
    def broken(x):
        raise RuntimeError("secret plugin detail")

    op = Op("broken", 1, forward=broken, backward=lambda g, y, x: (g,))
    registry = {"broken": LoadedOp(op, "broken", "test", "0")}
    g = GraphBuilder()
    g.op("broken", g.leaf(1.0))
    with serving(registry) as stub:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "node 1: op 'broken' failed in forward" in caught.value.details()
        assert "secret" not in caught.value.details()
        assert "secret plugin detail" in caplog.text


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_streaming_call_stops_computing_when_the_client_goes_away(how):
    slow = SlowOp(0.01)
    with serving(slow.registry({})) as stub:
        # 1000 levels at 10 ms each: 10 s of work if nobody stops it
        request = pb.EvaluateRequest(graph=chain("slow", 1000).proto())
        if how == "cancel":
            call = stub.EvaluateStream(request)
            threading.Timer(0.3, call.cancel).start()
            expected = grpc.StatusCode.CANCELLED
        else:
            call = stub.EvaluateStream(request, timeout=0.3)
            expected = grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
        assert caught.value.code() == expected
        time.sleep(0.2)
        calls_after_stop = slow.calls
        time.sleep(0.3)
        assert slow.calls == calls_after_stop < 200


def test_health_reports_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"gradserve.v1.GradientService", "grpc.health.v1.Health"} <= names


@pytest.fixture
def grpc_options(monkeypatch) -> list[dict]:
    """The channel options each server started in the test hands to grpc, in order."""
    given = []
    real = grpc.aio.server

    def recording(*args, **kwargs):
        given.append(dict(kwargs.get("options", ())))
        return real(*args, **kwargs)

    monkeypatch.setattr(grpc.aio, "server", recording)
    return given


def test_a_connection_s_maximum_age_reaches_grpc_in_milliseconds(registry, grpc_options):
    """With the default deadline as its grace, so that a call on an old connection can end;
    0 sets no age at all."""
    given = grpc_options
    with running_server(registry, max_connection_age=2.5, limits=Limits(default_deadline_s=7.0)):
        pass
    with running_server(registry, max_connection_age=0):
        pass
    with running_server(registry, max_connection_age=0.5):
        pass
    aged, ageless, young = given
    assert young["grpc.max_connection_age_ms"] == 500  # under a second is an age too
    assert aged["grpc.max_connection_age_ms"] == 2_500
    assert aged["grpc.max_connection_age_grace_ms"] == 7_000
    assert "grpc.max_connection_age_ms" not in ageless


# What docs/running-safely.md ("Floods of control frames") promises of grpc core's limits,
# and the option that must carry each to grpc.
FLOOD_LIMITS_THE_DOCS_STATE = {
    "a PING back for one reset stream in ten": ("grpc.http2.ping_on_rst_stream_percent", 10),
    "more than 1,000 such induced frames unread": (
        "grpc.http2.max_pending_induced_frames",
        1_000,
    ),
    "pings more often than every 5 minutes": (
        "grpc.http2.min_ping_interval_without_data_ms",
        5 * 60 * 1000,
    ),
    "a GOAWAY at the second strike": ("grpc.http2.max_ping_strikes", 2),
    "at random past 100,000 waiting": ("grpc.server.max_pending_requests", 100_000),
    "all past 300,000": ("grpc.server.max_pending_requests_hard_limit", 300_000),
}


def test_grpc_core_s_flood_limits_are_the_ones_the_docs_state(registry, grpc_options):
    """grpc core applies these itself (a reset flood's PINGs are drawn at random, so no
    short test can count them): each must reach grpc as documented."""
    docs = " ".join((ROOT / "docs" / "running-safely.md").read_text().split())
    with running_server(registry):
        pass
    (given,) = grpc_options
    for promise, (option, value) in FLOOD_LIMITS_THE_DOCS_STATE.items():
        assert promise in docs, promise
        assert given[option] == value, option


def test_work_still_queued_on_the_executor_when_the_server_stops_never_runs(registry):
    """Work waits on the executor only behind a thread that outlives its call (a cancelled
    call's evaluation runs on while its compute slot goes to the next call, whose work
    queues; the executor's threads beyond the slots are for parked steps, each still
    computing for its call): stopping the server cancels what waits instead of running it
    for nobody."""
    started, release = threading.Semaphore(0), threading.Event()

    def outliving() -> bool:
        started.release()
        return release.wait(30)

    with running_server(registry, threads=1) as server:
        executor = server._state.executor
        threads = 1 + compute_slots.PARKED
        running = [executor.submit(outliving) for _ in range(threads)]
        assert all(started.acquire(timeout=10) for _ in range(threads))
        queued = executor.submit(lambda: "ran")
    try:
        assert queued.cancelled()
    finally:
        release.set()
    assert all(outlived.result(10) for outlived in running)


@pytest.mark.parametrize("cache_mib", [75, 100, 101])
def test_a_plan_cache_that_with_the_arriving_share_fills_the_budget_is_refused(registry, cache_mib):
    """75 MiB is the edge: with the default arriving share (a quarter, 25 MiB) it is the
    whole 100 MiB budget, leaving the calls nothing."""
    refusal = (
        rf"the plan cache \({cache_mib} MiB\) and the requests arriving \(25 MiB\) must "
        r"together be smaller than the memory budget \(100 MiB\)"
    )
    with pytest.raises(ValueError, match=refusal):
        start_server(registry, max_memory_bytes=100 * 2**20, plan_cache_bytes=cache_mib * 2**20)


def test_a_negative_plan_cache_is_refused(registry):
    with pytest.raises(ValueError, match="cannot be negative"):
        start_server(registry, max_memory_bytes=100 * 2**20, plan_cache_bytes=-(2**20))


def test_requests_need_at_least_a_byte_arriving_and_a_plan_cache_may_be_none(registry):
    """No bytes arriving would let no request in: refused. One byte is a server taking one
    request message at a time (a read slot at least), and a plan cache of 0 caches nothing."""
    with pytest.raises(ValueError, match="cannot be negative"):
        start_server(registry, max_memory_bytes=100 * 2**20, max_arriving_bytes=0)
    with running_server(
        registry, max_memory_bytes=100 * 2**20, max_arriving_bytes=1, plan_cache_bytes=0
    ) as server:
        assert server._state.arrival.slots == 1


def test_a_large_selections_reply_is_made_off_the_event_loop(stub, monkeypatch):
    """A small graph selecting many nodes is answered and encoded on a compute thread: a
    million ids held the event loop about half a second, and every small call with it."""
    from gradserve.server.engine.run import QUICK_SELECTED_NODES
    from gradserve.server.service import evaluation

    encoded_on = []
    answer_reply = evaluation.answer_reply

    def recorded(answer, digest):
        encoded_on.append(threading.current_thread().name)
        return answer_reply(answer, digest)

    monkeypatch.setattr(evaluation, "answer_reply", recorded)
    g = GraphBuilder()
    x = g.leaf(0.5)
    g.op("sin", x)
    for count in (10, QUICK_SELECTED_NODES + 1):
        reply = stub.Evaluate(pb.EvaluateRequest(graph=g.proto(), nodes=[1, 0] * count))
        assert list(reply.node_ids) == [1, 0] * count
        assert list(reply.grads[:2]) == [1.0, pytest.approx(math.cos(0.5))]
    small, large = encoded_on
    assert small == "gradserve-loop" and large.startswith("gradserve_")
