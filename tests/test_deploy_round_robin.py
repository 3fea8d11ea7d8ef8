"""Client-side load balancing, as under Kubernetes with a headless service: one channel
with gRPC's round_robin policy over three servers spreads its calls across all of them."""

import json
from contextlib import ExitStack

import grpc
import pytest
from graphs import neuron
from metered import metered_server, sample, scrape

from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

CALLS = 30
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


@pytest.fixture
def three_servers(registry):
    """(gRPC port, metrics port) of three metered servers on loopback."""
    with ExitStack() as stack:
        started = [stack.enter_context(metered_server(registry)) for _ in range(3)]
        yield [(server.port, metrics_port) for server, metrics_port in started]


def evaluate_calls_per_server(servers) -> list[float]:
    return [
        sample(scrape(metrics_port), "gradserve_calls_total", method="Evaluate", code="OK")
        for _, metrics_port in servers
    ]


def make_calls(target: str, options: list) -> None:
    request = pb.EvaluateRequest(graph=neuron()[0].proto())
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = pb_grpc.GradientServiceStub(channel)
        for _ in range(CALLS):
            stub.Evaluate(request, timeout=10)


def test_round_robin_spreads_calls_over_every_server(three_servers):
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port, _ in three_servers)
    make_calls(target, [("grpc.service_config", ROUND_ROBIN)])
    counts = evaluate_calls_per_server(three_servers)
    assert sum(counts) == CALLS
    # Every server takes a fair share (exactly a third once all three connections are up).
    assert min(counts) >= CALLS / 6, counts


def test_without_it_one_connection_takes_every_call(three_servers):
    """gRPC's default policy, pick_first: why a plain TCP balancer is not enough."""
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port, _ in three_servers)
    make_calls(target, [])
    assert sorted(evaluate_calls_per_server(three_servers)) == [0, 0, CALLS]
