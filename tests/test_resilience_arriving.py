"""Request bytes still arriving are bounded (issue 19, finding 2): streams that declare a
large request and send most of it, never the end, get no more through than the read slots
of --max-arriving-mb allow, plus a small window per stream; a slot held too long while
others wait is taken back, and honest calls are served meanwhile."""

import asyncio
import time
from urllib.parse import unquote

import grpc
import pytest
from hardening import wait_until
from metered import metered_server, sample, scrape
from resilience import EVALUATE, HANG_S, MESSAGE_LIMIT, channel_to, stub_on, two_nodes

from bench.h2_client import H2GrpcClient
from bench.h2_flood import PartialBody
from gradserve.server.runtime import malloc
from gradserve.server.service.app import running_server
from gradserve.server.service.arrival import STANDING_WINDOW, ArrivalGate
from gradserve.v1 import gradserve_pb2 as pb

MIB = 2**20
MESSAGE = 1 * MIB  # --max-message-mb
ARRIVING = 2 * MIB  # --max-arriving-mb: two reads at once
STREAMS = 6
# What a stream may send before the client has the server's settings (a 16 KiB window after).
HTTP2_DEFAULT_WINDOW = 65_535


def _bytes_on_open_streams(bodies: list[PartialBody]) -> int:
    """The body bytes sent on the streams the server keeps open. A stream the server has
    just ended may not know it yet: when the count is over the bound, the streams read
    (sending nothing) for a tenth of a second, a fifth of the read-slot hold, first."""
    if sum(body.sent for body in bodies) > ARRIVING:
        settle = time.monotonic() + 0.1
        while time.monotonic() < settle:
            for body in bodies:
                body.receive(0.01)
    return sum(body.sent for body in bodies if body.outcome is None)


def test_partial_bodies_get_through_no_more_than_the_arriving_share(registry, monkeypatch):
    """Six streams each declare a 1 MiB request and send all but its last KiB as fast as
    the server's windows allow. At every moment the bytes the server has let through on
    the streams still open stay within two messages (the read slots) and HTTP/2's default
    window per stream; calls holding a slot too long are taken back with RESOURCE_EXHAUSTED naming
    max-arriving-mb, and an honest call answers meanwhile. Once each such call is done,
    the memory its body leaves freed is handed back to the system (malloc's heap)."""
    handed_back = []
    monkeypatch.setattr(malloc, "hand_back_freed_soon", lambda: handed_back.append(1))
    bound = ARRIVING + STREAMS * HTTP2_DEFAULT_WINDOW
    options = {"max_message_bytes": MESSAGE, "max_arriving_bytes": ARRIVING}
    with running_server(registry, max_memory_bytes=64 * MIB, **options) as server:
        gate = server._state.arrival
        bodies = [PartialBody(server.port, MESSAGE, MESSAGE - 1024) for _ in range(STREAMS)]
        ended: list[PartialBody] = []
        most_open = 0
        try:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                for body in list(bodies):
                    body.step()
                for body in list(bodies):
                    if body.outcome is not None:
                        bodies.remove(body)
                        ended.append(body)
                        body.close()
                        bodies.append(PartialBody(server.port, MESSAGE, MESSAGE - 1024))
                in_flight = _bytes_on_open_streams(bodies)
                most_open = max(most_open, in_flight)
                assert in_flight <= bound, f"{in_flight} bytes arriving, bound {bound}"
                assert gate.used <= ARRIVING
            with channel_to(server.port) as channel:
                reply = stub_on(channel).Evaluate(
                    pb.EvaluateRequest(graph=two_nodes()), timeout=HANG_S
                )
            assert list(reply.values) == [0.5, -0.5]
        finally:
            for body in bodies:
                body.close()
        # Every slot comes back once the streams are gone, those taken back included.
        assert wait_until(lambda: gate.used == 0 and not gate._waiting, timeout=HANG_S)
        assert wait_until(lambda: len(handed_back) == gate.taken_back, timeout=HANG_S)
    # The streams did push: two of them a whole slot's worth at some moment.
    assert most_open > ARRIVING - 2 * 1024
    assert gate.taken_back >= 1
    refused = [
        b
        for b in ended
        if b.outcome == f"grpc-status {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}"
    ]
    assert refused and all("max-arriving-mb = 2" in b.details for b in refused), [
        (b.outcome, b.details) for b in ended
    ]


def test_a_connection_holding_every_slot_gives_one_back_to_another_at_once(registry):
    """Forty calls on one connection send their headers and never their message: they hold
    both read slots. With the hold made an hour long, only the connection share can serve
    an honest call on another connection: one of the forty gives its slot back at once
    (RESOURCE_EXHAUSTED naming max-arriving-mb), and the honest call is answered."""
    options = {"max_message_bytes": MESSAGE, "max_arriving_bytes": ARRIVING}
    with (
        running_server(registry, max_memory_bytes=64 * MIB, **options) as server,
        H2GrpcClient(server.port) as hog,
    ):
        gate = server._state.arrival
        gate.hold_s = 3600.0
        states = [hog.streams[hog.open_stream(EVALUATE)] for _ in range(40)]
        assert wait_until(lambda: gate.used == ARRIVING, timeout=HANG_S)
        with channel_to(server.port) as channel:
            reply = stub_on(channel).Evaluate(pb.EvaluateRequest(graph=two_nodes()), timeout=HANG_S)
        assert list(reply.values) == [0.5, -0.5]
        assert gate.taken_back >= 1
        assert hog.pump(
            lambda: any(s.grpc_status is not None for s in states), time.monotonic() + 5
        )
        ended = [s for s in states if s.grpc_status is not None]
        assert {s.grpc_status for s in ended} == {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}
        message = dict(ended[0].headers or ())[b"grpc-message"].decode()
        assert "more than its share of the read slots" in unquote(message), message
        hog.close()
        assert wait_until(lambda: gate.used == 0 and not gate._waiting, timeout=HANG_S)


def test_the_arriving_share_in_use_is_a_gauge_that_rises_while_a_request_arrives(registry):
    """gradserve_arriving_used_bytes: 0 when idle; a whole message's slot (the default
    --max-message-mb) while a request declared at 1 MiB is still arriving; 0 again once its
    connection is gone. An honest call, whose request arrives at once, leaves it at 0."""
    with metered_server(registry) as (server, metrics_port):

        def used() -> float:
            return sample(scrape(metrics_port), "gradserve_arriving_used_bytes")

        assert used() == 0
        with channel_to(server.port) as channel:
            reply = stub_on(channel).Evaluate(pb.EvaluateRequest(graph=two_nodes()), timeout=HANG_S)
        assert list(reply.values) == [0.5, -0.5]
        assert used() == 0
        body = PartialBody(server.port, MIB, MIB - 1024)
        try:
            assert wait_until(lambda: (body.step(), used())[1] == MESSAGE_LIMIT, timeout=HANG_S)
            assert sample(scrape(metrics_port), "gradserve_arriving_reads_waiting") == 0
        finally:
            body.close()
        assert wait_until(lambda: used() == 0, timeout=HANG_S)


@pytest.mark.parametrize("honest_reads", [1, 2])
def test_a_connection_whose_reads_complete_keeps_its_slots_over_stalled_reads(
    registry, honest_reads
):
    """One connection opening calls that never send their message, and an honest one that
    has completed a call and is now sending ``honest_reads`` large requests slowly, with a
    slot more than it needs for them. With the hold then made short and the patience for a
    connection in good standing long, the stalled calls' slots are taken back again and
    again while the honest requests keep theirs, even when that is more than the honest
    connection's share (two of three slots between two connections). Without the
    standing, the oldest read went first, and a connection over its share at once: the
    honest reads, by the second take-back."""
    arriving = (honest_reads + 1) * MESSAGE
    options = {"max_message_bytes": MESSAGE, "max_arriving_bytes": arriving}
    with (
        running_server(registry, max_memory_bytes=64 * MIB, **options) as server,
        H2GrpcClient(server.port) as stalled,
        H2GrpcClient(server.port) as honest,
    ):
        gate = server._state.arrival
        gate.hold_s, gate.patience = HANG_S, 1e6  # nothing is due while the scene is set
        for _ in range(30):
            stalled.open_stream(EVALUATE)
        assert wait_until(lambda: gate.used == arriving and gate.waiting, timeout=HANG_S)
        # The honest call takes a slot from the stalled connection at once (over its share).
        request = pb.EvaluateRequest(graph=two_nodes()).SerializeToString()
        done = honest.start_call(EVALUATE, request)
        assert honest.wait_finished(done, HANG_S) and honest.streams[done].grpc_status == 0
        gate.hold_s = 0.05
        sending = [
            honest.start_partial_call(EVALUATE, MESSAGE, MESSAGE // 2) for _ in range(honest_reads)
        ]
        taken_back = gate.taken_back

        def four_more_taken_back() -> bool:
            # The stalled connection opens another call, and reads what the server sends:
            # here, with a quiet connection, grpc told the server that a call taken back
            # had ended (which gives back its slot) only once something more happened on
            # that connection (not yet explained; the hog test above sees it at once).
            stalled.open_stream(EVALUATE)
            stalled.pump(lambda: False, time.monotonic() + 0.01)
            return gate.taken_back >= taken_back + 4

        assert wait_until(four_more_taken_back, timeout=HANG_S)
        honest.pump(lambda: False, time.monotonic() + 0.2)
        assert not [honest.streams[s] for s in sending if honest.streams[s].finished]
        stalled.pump(lambda: False, time.monotonic() + 0.2)
        exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        ended = [s.grpc_status for s in stalled.streams.values() if s.finished]
        assert len(ended) >= 4 and set(ended) == {exhausted}, ended
        stalled.close()
        honest.close()
        assert wait_until(lambda: gate.used == 0 and not gate.waiting, timeout=HANG_S)


def test_good_standing_is_not_banked():
    """A connection whose reads completed for a long time, then stall, loses its good
    standing after some dozens of reads taken back (the record tells of recent reads), and
    regains it as its reads complete again; an unknown connection is not in good standing."""
    gate = ArrivalGate(2 * MESSAGE, MESSAGE)
    assert not gate._in_good_standing("unknown")
    for _ in range(10_000):
        gate._note("veteran", completed=True)
    assert gate._in_good_standing("veteran")
    taken_back = 0
    while gate._in_good_standing("veteran"):
        gate._note("veteran", completed=False)
        taken_back += 1
    assert taken_back <= STANDING_WINDOW
    completed = 0
    while not gate._in_good_standing("veteran"):
        gate._note("veteran", completed=True)
        completed += 1
    assert completed <= STANDING_WINDOW


@pytest.mark.parametrize("hold_s", [0.0, 3600.0])
def test_a_waiting_read_takes_a_slot_back_only_once_it_has_been_held_hold_s(hold_s):
    """One slot, held by a read of one connection; a read of another waits. Neither holds
    more than its share, so the slot is taken back once held ``hold_s``: at once with 0,
    not within the test with an hour (the holder then ends by itself, and the waiter
    gets the slot it gives back)."""

    async def scenario() -> tuple[list[str], int, str]:
        gate = ArrivalGate(max_bytes=1, message_bytes=1, hold_s=hold_s)
        assert gate.slots == 1
        release = asyncio.Event()
        taken = []

        async def slow_message() -> str:
            await release.wait()
            return "first"

        async def message() -> str:
            return "second"

        def take_back(give_back, over_share) -> None:  # ends the call, then frees the slot
            taken.append("first")
            first.cancel()
            asyncio.get_running_loop().call_soon(give_back)

        first = asyncio.create_task(gate.read(slow_message, take_back, lambda: "peer A"))
        await asyncio.sleep(0)  # it holds the slot
        second = asyncio.create_task(gate.read(message, None, lambda: "peer B"))
        done, _ = await asyncio.wait({second}, timeout=0.5)
        if not done:  # still waiting: let the first read end on its own
            release.set()
        got = await second
        await asyncio.gather(first, return_exceptions=True)
        return taken, gate.taken_back, got

    taken, counted, got = asyncio.run(scenario())
    assert got == "second"
    assert taken == (["first"] if hold_s == 0 else [])
    assert counted == len(taken)


def test_reads_just_granted_are_not_taken_back_for_the_connection_share():
    """A connection new to the gate (no record, so not in good standing) holds both slots
    with reads just granted, whose messages come a moment later; a read of another
    connection waits. With the settling time made an hour, neither is taken back: both
    complete and the waiting read gets a slot. Before, one was taken back at once for the
    connection's share: in issue 19's soak a reset flood's waiting reads took back the
    slots of a busy client's small calls, which ended RESOURCE_EXHAUSTED."""

    async def scenario() -> tuple[list[str], list[str]]:
        gate = ArrivalGate(max_bytes=2, message_bytes=1)
        gate.settle_s = 3600.0
        other_waits = asyncio.Event()
        taken: list[str] = []

        async def message_soon() -> str:
            await other_waits.wait()
            return "busy"

        async def message() -> str:
            return "other"

        def take_back(give_back, over_share) -> None:
            taken.append("busy")
            asyncio.get_running_loop().call_soon(give_back)

        busy = [
            asyncio.create_task(gate.read(message_soon, take_back, lambda: "busy client"))
            for _ in range(2)
        ]
        await asyncio.sleep(0)  # both hold a slot
        assert gate.used == 2
        other = asyncio.create_task(gate.read(message, None, lambda: "another client"))
        await asyncio.sleep(0)  # it waits, and looks for a slot to take back
        assert gate.waiting == 1
        other_waits.set()
        got = await asyncio.wait_for(asyncio.gather(*busy, other), HANG_S)
        return taken, got

    taken, got = asyncio.run(scenario())
    assert taken == []
    assert got == ["busy", "busy", "other"]
