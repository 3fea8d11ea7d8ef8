"""Plans stay where they were compiled: the SDK names each call's graph structure in the
``gradserve-structure`` header, and routing by a consistent hash of it (as Envoy's ring hash
does, deploy/envoy.yaml) sends every call for one structure to the one server holding its
plan. Shown on loopback with three servers and a client-side picker, counted through the
servers' plan-cache metrics."""

import bisect
import hashlib
from concurrent import futures
from contextlib import ExitStack

import grpc
import pytest
from metered import metered_server, sample, scrape

from gradserve.client import Value, calls
from gradserve.client.channel import serialized_calls
from gradserve.client.structure import HEADER
from gradserve.v1 import gradserve_pb2 as pb


def structures() -> list[Value]:
    """Five losses of different structure: tanh(sum of k products), k = 1..5."""
    losses = []
    for k in range(1, 6):
        total = Value(0.5)
        for i in range(k):
            total = total + Value(0.1 * i) * Value(-0.2 * i, label=f"w{i}")
        losses.append(total.tanh())
    return losses


class RingPicker:
    """Consistent hashing as Envoy's RING_HASH does it: each server at many points of a
    64-bit ring, a key served by the first point at or after its hash."""

    def __init__(self, servers: list[str], points: int = 128) -> None:
        self._ring = sorted(
            (_hash(f"{server}_{i}"), server) for server in servers for i in range(points)
        )
        self._hashes = [h for h, _ in self._ring]

    def pick(self, key: str) -> str:
        index = bisect.bisect_left(self._hashes, _hash(key)) % len(self._ring)
        return self._ring[index][1]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def test_the_header_is_the_plan_digest_the_server_returns(stub):
    for loss in structures():
        call = calls.evaluate_call(loss)
        reply = stub.Evaluate(pb.EvaluateRequest.FromString(call.request))
        assert call.request.structure == reply.plan_digest.hex()


def test_the_sdk_sends_the_header_and_new_leaf_values_keep_it():
    seen: list[dict] = []

    def record(request, context):
        seen.append(dict(context.invocation_metadata()))
        context.abort(grpc.StatusCode.UNAVAILABLE, "recorded")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    handler = grpc.unary_unary_rpc_method_handler(record)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "gradserve.v1.GradientService", {"Evaluate": handler}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            evaluate, _ = serialized_calls(channel)
            x = Value(1.0)
            loss = (x * Value(2.0)).tanh()
            first = calls.evaluate_call(loss)
            x.data = 5.0  # same structure, new values
            second = calls.evaluate_call(loss)
            for call in (first, second):
                with pytest.raises(grpc.RpcError):
                    evaluate(call.request, metadata=(("x-caller", "test"),))
    finally:
        server.stop(0)
    assert first.request != second.request
    assert [m[HEADER] for m in seen] == [first.request.structure] * 2
    assert all(m["x-caller"] == "test" for m in seen)  # the caller's metadata still goes


def misses_and_hits(ports: list[int]) -> tuple[float, float]:
    texts = [scrape(port) for port in ports]
    lookups = "gradserve_plan_cache_lookups_total"
    return (
        sum(sample(text, lookups, outcome="miss") for text in texts),
        sum(sample(text, lookups, outcome="hit") for text in texts),
    )


@pytest.mark.parametrize("routing", ["consistent hash", "round robin"])
def test_a_repeated_structure_hits_one_servers_cache(registry, routing):
    rounds, losses = 5, structures()
    with ExitStack() as stack:
        servers = [stack.enter_context(metered_server(registry)) for _ in range(3)]
        targets = [f"127.0.0.1:{server.port}" for server, _ in servers]
        channels = {t: stack.enter_context(grpc.insecure_channel(t)) for t in targets}
        evaluate = {t: serialized_calls(channel)[0] for t, channel in channels.items()}
        picker = RingPicker(targets)
        served_by: dict[str, set[str]] = {}
        for round_ in range(rounds):
            for index, loss in enumerate(losses):
                call = calls.evaluate_call(loss)
                if routing == "consistent hash":
                    target = picker.pick(call.request.structure)
                else:
                    target = targets[(round_ * len(losses) + index) % 3]
                evaluate[target](call.request)
                served_by.setdefault(call.request.structure, set()).add(target)
        misses, hits = misses_and_hits([metrics_port for _, metrics_port in servers])
    calls_made = rounds * len(losses)
    assert misses + hits == calls_made
    if routing == "consistent hash":
        assert all(len(targets_) == 1 for targets_ in served_by.values())
        assert len(set().union(*served_by.values())) > 1  # the structures are spread
        assert misses == len(losses)  # each structure compiled once, on its server
    else:
        assert misses == 3 * len(losses)  # each structure compiled on every server


def test_removing_a_server_moves_only_its_structures():
    keys = [f"{i:032x}" for i in range(600)]
    servers = ["a:1", "b:1", "c:1"]
    before = RingPicker(servers)
    after = RingPicker(servers[:2])
    moved = [k for k in keys if before.pick(k) != after.pick(k)]
    assert moved and all(before.pick(k) == "c:1" for k in moved)
    assert 100 < len(moved) < 300  # about a third


def test_a_request_by_plan_digest_carries_the_same_header(stub):
    """The SDK sends a structure it sent before by its plan digest alone; its header stays
    the same, so it reaches the replica that holds the plan."""
    plans = calls.PlanDigests()
    x = Value(0.5)
    loss = (x * Value(-2.0, label="w")).tanh()
    first = calls.backward_call(loss, plans=plans)
    reply = stub.Evaluate(pb.EvaluateRequest.FromString(first.request))
    plans.learn(first, reply)
    x.data = 3.0
    second = calls.backward_call(loss, plans=plans)
    assert pb.EvaluateRequest.FromString(second.request).plan_digest == reply.plan_digest
    assert second.request.structure == first.request.structure == reply.plan_digest.hex()
    assert second.whole_graph().structure == first.request.structure  # after a NOT_FOUND
