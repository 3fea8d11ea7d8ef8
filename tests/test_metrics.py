"""The Prometheus endpoint: calls by method and status, nodes evaluated, latency."""

import asyncio
import queue
import subprocess
import time
from types import SimpleNamespace

import grpc
import pytest
from graphs import GraphBuilder, neuron
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hardening import wait_until
from metered import metered_server, sample, scrape
from prometheus_client.parser import text_string_to_metric_families
from servers import GRADSERVE, Served, health

from bench.ports import free_port
from gradserve.server.cli import build_parser
from gradserve.server.service.metrics import TALLY_S, CallMetrics, StreamTally, _code_of
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


@pytest.fixture
def metered(registry):
    """A stub on a fresh metered server, and the port of its metrics endpoint."""
    with (
        metered_server(registry) as (server, metrics_port),
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield pb_grpc.GradientServiceStub(channel), metrics_port


def test_a_call_shows_up_in_the_scrape(metered):
    stub, metrics_port = metered
    assert sample(scrape(metrics_port), "gradserve_calls_total", method="Evaluate", code="OK") == 0
    g, _ = neuron()
    for _ in range(3):  # through the same wrapped handler each time
        stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
    text = scrape(metrics_port)
    assert sample(text, "gradserve_calls_total", method="Evaluate", code="OK") == 3
    assert sample(text, "gradserve_nodes_evaluated_total", method="Evaluate") == 30
    assert sample(text, "gradserve_call_duration_seconds_count", method="Evaluate") == 3
    assert sample(text, "gradserve_call_duration_seconds_sum", method="Evaluate") > 0


def test_latency_buckets_are_the_steps_of_each_decade_the_docs_state(metered):
    """docs/observability.md: 1, 2.5 and 5 of each decade from 0.5 ms to 10 s (and +Inf)."""
    stub, metrics_port = metered
    g, _ = neuron()
    stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
    steps = sorted(step * 10.0**decade for decade in range(-4, 2) for step in (1, 2.5, 5))
    stated = [bound for bound in steps if 0.0005 <= bound <= 10]
    bounds = [
        s.labels["le"]
        for family in text_string_to_metric_families(scrape(metrics_port))
        for s in family.samples
        if s.name == "gradserve_call_duration_seconds_bucket" and s.labels["method"] == "Evaluate"
    ]
    assert [float(le) for le in bounds[:-1]] == pytest.approx(stated, rel=1e-12)
    assert bounds[-1] == "+Inf"


def test_each_methods_handler_is_wrapped_once():
    interceptor = CallMetrics().interceptor("/gradserve.v1.GradientService/")
    details = SimpleNamespace(method="/grpc.health.v1.Health/Check")

    async def echo(request, context):
        return request

    def intercept(handler):
        async def continuation(_):
            return handler

        return asyncio.run(interceptor.intercept_service(continuation, details))

    handler = grpc.unary_unary_rpc_method_handler(echo)
    wrapped = intercept(handler)
    assert wrapped is not handler
    assert intercept(handler) is wrapped
    assert intercept(grpc.unary_unary_rpc_method_handler(echo)) is not wrapped


def test_another_service_s_failed_call_is_counted_with_its_status(registry):
    """The interceptor's calls (health here) are counted by the status the client got."""
    with (
        metered_server(registry) as (server, metrics_port),
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        health_stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            health_stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        health_stub.Check(health_pb2.HealthCheckRequest())
        text = scrape(metrics_port)
    assert sample(text, "gradserve_calls_total", method="Check", code="NOT_FOUND") == 1
    assert sample(text, "gradserve_calls_total", method="Check", code="OK") == 1


@pytest.mark.parametrize("reported", [5, grpc.StatusCode.NOT_FOUND])
def test_a_status_reported_as_a_number_is_read_as_its_code(reported):
    """Recent grpc.aio reports the enum (the test above); older ones the raw number."""
    context = SimpleNamespace(code=lambda: reported)
    assert _code_of(context) is grpc.StatusCode.NOT_FOUND
    assert _code_of(SimpleNamespace(code=lambda: None)) is None


def test_streams_and_errors_are_counted_by_status_code(metered):
    stub, metrics_port = metered
    g, _ = neuron()
    chunks = list(stub.EvaluateStream(pb.EvaluateRequest(graph=g.proto(), chunk_size=3)))
    assert len(chunks) == 4
    bad = GraphBuilder()
    bad.op("sinh", bad.leaf(1.0))
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as err:
            stub.Evaluate(pb.EvaluateRequest(graph=bad.proto()))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = scrape(metrics_port)
    assert sample(text, "gradserve_calls_total", method="EvaluateStream", code="OK") == 1
    assert sample(text, "gradserve_nodes_evaluated_total", method="EvaluateStream") == 10
    assert sample(text, "gradserve_calls_total", method="Evaluate", code="INVALID_ARGUMENT") == 2
    # Failed calls evaluated nothing.
    assert sample(text, "gradserve_nodes_evaluated_total", method="Evaluate") == 0


def test_the_cli_serves_metrics_only_when_asked(monkeypatch):
    assert build_parser().parse_args(["serve"]).metrics_port == 0  # off by default
    monkeypatch.setenv("GRADSERVE_METRICS_PORT", "9123")
    assert build_parser().parse_args(["serve"]).metrics_port == 9123

    metrics_port = free_port()
    with Served("--metrics-port", str(metrics_port), "--workers", "1") as served:
        assert health(served.port).returncode == 0
        text = scrape(metrics_port)
        assert sample(text, "gradserve_calls_total", method="Check", code="OK") == 1


def test_a_metrics_port_in_use_is_a_clear_error():
    with Served("--workers", "1") as served:
        port = served.port
        result = subprocess.run(
            [GRADSERVE, "serve", "--port", "0", "--workers", "1", "--metrics-port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1  # not a usage error: the address is taken
        assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_stream_the_client_cancels_counts_as_cancelled(metered):
    stub, metrics_port = metered
    g = GraphBuilder()
    node = g.leaf(0.5)
    for _ in range(100_000):
        node = g.op("tanh", node)
    stream = stub.EvaluateStream(pb.EvaluateRequest(graph=g.proto(), chunk_size=1))
    next(stream)
    stream.cancel()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = scrape(metrics_port)
        if sample(text, "gradserve_calls_total", method="EvaluateStream", code="CANCELLED"):
            break
        time.sleep(0.1)
    assert sample(text, "gradserve_calls_total", method="EvaluateStream", code="CANCELLED") == 1
    assert sample(text, "gradserve_calls_total", method="EvaluateStream", code="OK") == 0
    assert sample(text, "gradserve_nodes_evaluated_total", method="EvaluateStream") == 0


@pytest.mark.parametrize("bad", ["-1", "65536", "ninety"])
def test_a_bad_metrics_port_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--metrics-port", bad])
    assert exit_.value.code == 2
    assert f"'{bad}' is not a port" in capsys.readouterr().err


def test_plan_cache_hits_and_misses_are_reported(metered):
    stub, metrics_port = metered
    g = GraphBuilder()
    g.op("tanh", g.leaf(0.25, label="plan cache metrics"))  # a structure new to the server
    for _ in range(3):
        stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
    text = scrape(metrics_port)
    assert sample(text, "gradserve_plan_cache_lookups_total", outcome="miss") == 1
    assert sample(text, "gradserve_plan_cache_lookups_total", outcome="hit") == 2
    assert sample(text, "gradserve_plan_cache_plans") == 1


def test_a_call_by_plan_digest_counts_its_graphs_nodes(metered):
    # The request carries no structure, only the digest and leaf values: the count comes
    # from the cached plan, 10 nodes for the neuron.
    stub, metrics_port = metered
    g, _ = neuron()
    digest = stub.Evaluate(pb.EvaluateRequest(graph=g.proto())).plan_digest
    stub.Evaluate(pb.EvaluateRequest(plan_digest=digest, graph=pb.Graph(leaf_values=g.leaf_values)))
    text = scrape(metrics_port)
    assert sample(text, "gradserve_calls_total", method="Evaluate", code="OK") == 2
    assert sample(text, "gradserve_nodes_evaluated_total", method="Evaluate") == 20


def _exposition(metrics: CallMetrics) -> dict[tuple, float]:
    """Every sample of ``metrics``' registry, by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_a_stream_s_tally_records_what_recording_each_message_would():
    """The oracle records each message on its own; the tally adds them up first. Latencies
    on both sides of bucket bounds, on one and beyond the last."""
    seconds = [0.0001, 0.0005, 0.00050001, 0.001, 0.003, 0.3, 7.0, 10.0, 11.0, 0.0002]
    one_by_one, tallied = CallMetrics(), CallMetrics()

    async def tally_all() -> None:
        tally = StreamTally(tallied, "Train", asyncio.get_running_loop())
        for i, elapsed in enumerate(seconds):
            one_by_one.record("Train", grpc.StatusCode.OK, elapsed, nodes=i)
            tally.add(elapsed, i)
        tally.flush()
        tally.flush()  # nothing left: records nothing twice

    asyncio.run(tally_all())
    expected, got = _exposition(one_by_one), _exposition(tallied)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert got["gradserve_calls_total", (("code", "OK"), ("method", "Train"))] == len(seconds)
    assert got["gradserve_nodes_evaluated_total", (("method", "Train"),)] == sum(range(10))


def test_a_tally_records_itself_once_due_without_another_message():
    tallied = CallMetrics()

    async def one_message() -> tuple[float, float]:
        tally = StreamTally(tallied, "Train", asyncio.get_running_loop())
        tally.add(0.001, 10)
        before = _exposition(tallied).get(
            ("gradserve_calls_total", (("code", "OK"), ("method", "Train"))), 0
        )
        await asyncio.sleep(TALLY_S * 3)
        after = _exposition(tallied)[
            ("gradserve_calls_total", (("code", "OK"), ("method", "Train")))
        ]
        return before, after

    before, after = asyncio.run(one_message())
    assert (before, after) == (0, 1)


def _train_message(request_id: int, request: pb.EvaluateRequest) -> pb.TrainRequest:
    return pb.TrainRequest(id=request_id, request=request)


def test_train_messages_are_counted_while_the_stream_is_open_and_exactly_at_its_end(metered):
    stub, metrics_port = metered
    g, _ = neuron()
    outbox = queue.SimpleQueue()
    answers = stub.Train(iter(outbox.get, None))
    ok = {"method": "Train", "code": "OK"}
    for i in range(3):
        outbox.put(_train_message(i, pb.EvaluateRequest(graph=g.proto())))
        assert next(answers).response.grads
    # Open, the stream has recorded its messages once they were due (TALLY_S), unasked.
    assert wait_until(lambda: sample(scrape(metrics_port), "gradserve_calls_total", **ok) == 3, 10)
    outbox.put(_train_message(3, pb.EvaluateRequest(graph=g.proto(), nodes=[99])))  # fails
    assert next(answers).status  # a failed message is recorded at once, by itself
    text = scrape(metrics_port)
    assert sample(text, "gradserve_calls_total", method="Train", code="INVALID_ARGUMENT") == 1
    for i in range(4, 6):
        outbox.put(_train_message(i, pb.EvaluateRequest(graph=g.proto())))
        assert next(answers).response.grads
    outbox.put(None)
    assert list(answers) == []  # the stream has ended: its status came after the tally
    text = scrape(metrics_port)
    assert sample(text, "gradserve_calls_total", **ok) == 5 + 1  # and the stream itself
    assert sample(text, "gradserve_call_duration_seconds_count", method="Train") == 7
    # 10 nodes a successful message, counted once: not again as the stream's.
    assert sample(text, "gradserve_nodes_evaluated_total", method="Train") == 50
