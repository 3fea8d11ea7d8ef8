"""Issue 19's findings against an in-process server: what outlives a call is bounded in
bytes, one connection or one token cannot take every call slot, a request must arrive in time, gzip
bombs are refused before they are inflated, and a stream's chunks are bounded in number."""

import logging
import threading
import time
from collections import Counter

import grpc
import numpy as np
import pytest
from graphs import GraphBuilder
from hardening import SlowOp, chain, wait_until
from resilience import HalfOpenCall, channel_to, repeated_nodes, serve, stub_on

from bench.abusers import Abusers
from bench.h2_client import H2GrpcClient
from gradserve.server.service import evaluation, logs
from gradserve.server.service.app import running_server
from gradserve.server.service.calls import call_log
from gradserve.server.service.limits import Limits
from gradserve.server.service.metrics import CallMetrics
from gradserve.v1 import gradserve_pb2 as pb

MIB = 2**20


def test_plans_with_distinct_megabyte_labels_stay_within_the_plan_cache(registry):
    """Finding 1: 1-node graphs, each with a distinct 1 MB label, all compiled and cached:
    the cache holds at most --plan-cache-mb, and each plan keeps 65 characters of its
    label (so the cache holds many of them, not three)."""
    metrics = CallMetrics()
    options = {"max_memory_bytes": 64 * MIB, "plan_cache_bytes": 2 * MIB, "metrics": metrics}
    with running_server(registry, **options) as server, channel_to(server.port) as channel:
        stub = stub_on(channel)
        for i in range(40):
            graph = pb.Graph(node_ops=[0], input_counts=[0], leaf_values=[1.0])
            graph.labels.append(f"{i:04d}" + "x" * MIB)
            stub.Evaluate(pb.EvaluateRequest(graph=graph), timeout=30)
        held = metrics.registry.get_sample_value("gradserve_plan_cache_bytes")
        plans = metrics.registry.get_sample_value("gradserve_plan_cache_plans")
    assert 0 < held <= 2 * MIB
    assert plans == 40  # a plan of a megabyte label takes a few kB


def test_one_connection_holds_at_most_its_share_of_the_call_slots(registry):
    """Finding 5: --max-concurrent-calls 8 gives one connection 2 slots: its third call is
    refused RESOURCE_EXHAUSTED naming max-calls-per-connection, while a call on another
    connection is still served."""
    slow = SlowOp(seconds=30)
    limits = Limits(max_concurrent_calls=8)
    assert limits.max_calls_per_connection == 2
    with (
        running_server(slow.registry(registry), limits=limits) as server,
        channel_to(server.port, own_connection=1) as greedy,
        channel_to(server.port, own_connection=2) as other,
    ):
        napping = [
            stub_on(greedy).Evaluate.future(
                pb.EvaluateRequest(graph=chain("slow", 1).proto()), timeout=60
            )
            for _ in range(2)
        ]
        try:
            assert wait_until(lambda: slow.calls == 2, timeout=10)
            with pytest.raises(grpc.RpcError) as caught:
                stub_on(greedy).Evaluate(pb.EvaluateRequest(graph=chain("neg", 1).proto()))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max-calls-per-connection = 2" in caught.value.details()
            reply = stub_on(other).Evaluate(pb.EvaluateRequest(graph=chain("neg", 1).proto()))
            assert list(reply.values) == [0.5, -0.5]
        finally:
            slow.release.set()
        assert all(len(call.result(timeout=30).node_ids) == 2 for call in napping)


def test_one_token_holds_at_most_its_share_of_the_call_slots(registry):
    """One tenant with many connections cannot take every slot: with two tokens and
    --max-concurrent-calls 8, a token holds 4 calls, over any number of connections; its
    fifth is refused RESOURCE_EXHAUSTED naming max-calls-per-token, while the other
    token's call is still served. Once a call of the first token ends, it is served
    again."""
    slow = SlowOp(seconds=30)
    limits = Limits(max_concurrent_calls=8)
    assert (limits.max_calls_per_token, limits.max_calls_per_connection) == (4, 2)
    greedy, other = (("authorization", "Bearer tenant-a"),), (("authorization", "Bearer tenant-b"),)
    slow_request = pb.EvaluateRequest(graph=chain("slow", 1).proto())
    quick_request = pb.EvaluateRequest(graph=chain("neg", 1).proto())
    with running_server(
        slow.registry(registry), limits=limits, auth_token=["tenant-a", "tenant-b"]
    ) as server:
        channels = [channel_to(server.port, own_connection=i) for i in range(4)]
        try:
            napping = [
                stub_on(channels[i // 2]).Evaluate.future(slow_request, timeout=60, metadata=greedy)
                for i in range(4)
            ]
            assert wait_until(lambda: slow.calls == 4, timeout=10)
            with pytest.raises(grpc.RpcError) as caught:
                stub_on(channels[2]).Evaluate(quick_request, timeout=30, metadata=greedy)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max-calls-per-token = 4" in caught.value.details()
            assert "retry later" in caught.value.details()
            served = stub_on(channels[3]).Evaluate(quick_request, timeout=30, metadata=other)
            assert list(served.values) == [0.5, -0.5]
            slow.release.set()
            assert all(len(call.result(timeout=30).node_ids) == 2 for call in napping)
            again = stub_on(channels[2]).Evaluate(quick_request, timeout=30, metadata=greedy)
            assert list(again.values) == [0.5, -0.5]
        finally:
            slow.release.set()
            for channel in channels:
                channel.close()


def test_with_one_token_every_caller_shares_it_and_no_token_share_applies(registry):
    """With a single token there are no tenants to be fair between: its calls may take
    every slot that the connection shares allow."""
    slow = SlowOp(seconds=30)
    limits = Limits(max_concurrent_calls=4, calls_per_connection=4)
    token = (("authorization", "Bearer only"),)
    slow_request = pb.EvaluateRequest(graph=chain("slow", 1).proto())
    with (
        running_server(slow.registry(registry), limits=limits, auth_token="only") as server,
        channel_to(server.port) as channel,
    ):
        calls = [
            stub_on(channel).Evaluate.future(slow_request, timeout=60, metadata=token)
            for _ in range(4)
        ]
        try:
            assert wait_until(lambda: slow.calls == 4, timeout=10)
        finally:
            slow.release.set()
        assert all(len(call.result(timeout=30).node_ids) == 2 for call in calls)


def test_a_request_that_does_not_arrive_in_time_ends_deadline_exceeded(registry):
    """Finding 2: the request timeout applies while the request arrives (here a call that
    never sends it), whatever the call's own, longer deadline."""
    limits = Limits(request_timeout_s=0.2)
    with running_server(registry, limits=limits) as server, channel_to(server.port) as channel:
        half_open = HalfOpenCall(channel, "/gradserve.v1.GradientService/Evaluate", timeout=60)
        try:
            assert half_open.done.wait(30)
            assert half_open.call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "request-timeout" in half_open.call.details()
        finally:
            half_open.close()


def test_a_compressed_request_is_refused_before_it_is_inflated(registry):
    """Finding 4: a gzip request is refused by grpc itself (the server enables no
    compression), so no worker inflates it; the server then serves the next call."""
    graph = chain("neg", 1).proto()
    with running_server(registry) as server:
        with (
            grpc.insecure_channel(
                f"127.0.0.1:{server.port}", compression=grpc.Compression.Gzip
            ) as gzipped,
            pytest.raises(grpc.RpcError) as caught,
        ):
            stub_on(gzipped).Evaluate(pb.EvaluateRequest(graph=graph), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "compression" in caught.value.details().lower()
        with channel_to(server.port) as plain:
            assert list(stub_on(plain).Evaluate(pb.EvaluateRequest(graph=graph)).values) == [
                0.5,
                -0.5,
            ]


def test_a_stream_of_one_node_repeated_in_chunks_of_one_is_chunked_in_bulk(registry):
    """Finding 7: node 0 selected 100,000 times with chunk_size 1 comes in at most
    MAX_CHUNKS chunks (a chunk costs a message's work whatever it holds), all results
    right."""
    request = repeated_nodes(100_000)
    request.chunk_size = 1
    with running_server(registry) as server, channel_to(server.port) as channel:
        chunks = list(stub_on(channel).EvaluateStream(request, timeout=60))
    assert len(chunks) <= evaluation.MAX_CHUNKS
    assert sum(len(chunk.node_ids) for chunk in chunks) == 100_000
    assert all(set(chunk.values) == {0.5} for chunk in chunks)


def test_a_small_stream_keeps_the_chunk_size_it_asks_for(registry):
    g = GraphBuilder()
    g.op("sum", *[g.leaf(1.0) for _ in range(10)])
    with running_server(registry) as server, channel_to(server.port) as channel:
        request = pb.EvaluateRequest(graph=g.proto(), chunk_size=1)
        chunks = list(stub_on(channel).EvaluateStream(request, timeout=30))
    assert [len(chunk.node_ids) for chunk in chunks] == [1] * 11
    assert np.isclose(chunks[-1].values[0], 10.0)


def test_calls_beside_a_rapid_reset_flood_are_never_cancelled():
    """Finding 7: while two connections open and reset streams as fast as Python can
    (thousands a second), no call of four clients is cancelled. The reset streams wait in grpc
    core's queue of calls the server has not taken yet; under grpc's default limit of
    1,000 core refused calls at random past it, and the clients saw CANCELLED."""
    with serve() as served:
        flood = Abusers(served.port)
        flood.threads = [threading.Thread(target=flood._rapid_reset, daemon=True) for _ in range(2)]
        outcomes: Counter = Counter()
        request = pb.EvaluateRequest(graph=chain("neg", 3).proto())

        def client(stop_at: float) -> None:
            with channel_to(served.port) as channel:
                while time.monotonic() < stop_at:
                    try:
                        stub_on(channel).Evaluate(request, timeout=30)
                        outcomes["OK"] += 1
                    except grpc.RpcError as error:
                        outcomes[error.code().name + ": " + (error.details() or "")[:120]] += 1

        with flood:
            stop_at = time.monotonic() + 15
            clients = [threading.Thread(target=client, args=(stop_at,)) for _ in range(4)]
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
        streams = sum(count for (kind, _), count in flood.outcomes.items() if kind == "rapid-reset")
    assert streams >= 2  # 10k streams each, at least
    # Other limits may refuse a rare call as retryable (RESOURCE_EXHAUSTED: 2 of 3,674 in
    # one run of five, its cause not yet found); none is cancelled.
    assert not [outcome for outcome in outcomes if outcome.startswith("CANCELLED")], outcomes
    assert outcomes["OK"] >= 0.99 * sum(outcomes.values()), dict(outcomes)


@pytest.mark.usefixtures("fresh_call_log_rates")
def test_a_rapid_reset_flood_is_not_logged_call_by_call(registry, caplog):
    """Finding 7: 3,000 streams opened and reset at once on one connection end as failed
    calls, which the call log writes at its bounded rate for one failure and then counts in
    a line (the exact rate: test_resilience_logs.py); another client is still served."""
    with (
        caplog.at_level(logging.INFO, logger="gradserve.server.service.servicer"),
        running_server(registry) as server,
    ):
        with H2GrpcClient(server.port) as flooder:
            # In rounds of 50: a stream reset counts against the connection's 64 until the
            # server has ended its call, and grpc core refuses streams past that.
            for _ in range(60):
                for _ in range(50):
                    flooder.reset(flooder.open_stream("/gradserve.v1.GradientService/Evaluate"))
                flooder.pump(lambda: False, time.monotonic() + 0.05)  # answer grpc's pings
        with channel_to(server.port) as channel:
            reply = stub_on(channel).Evaluate(pb.EvaluateRequest(graph=chain("neg", 1).proto()))
            assert list(reply.values) == [0.5, -0.5]

        def cancelled() -> list[str]:
            call_log.flush()
            return [
                record.getMessage()
                for record in caplog.records
                if record.getMessage().startswith("Evaluate nodes=0 status=CANCELLED")
            ]

        def summaries() -> list[str]:
            call_log.flush()
            return [r.getMessage() for r in caplog.records if "more Evaluate" in r.getMessage()]

        # The server ends the reset streams as it gets to them, faster than the log's rate:
        # past it, the lines stop and a line counts the rest.
        assert wait_until(lambda: summaries(), 60), f"{len(cancelled())} lines, no summary"
    assert len(cancelled()) >= logs.FAILURES_PER_SECOND
    suppressed = sum(int(line.split()[0]) for line in summaries())
    assert suppressed > 0
