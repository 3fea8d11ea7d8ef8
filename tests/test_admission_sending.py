"""The sending share (service/sending.py): its size, what a connection may hold of it,
and what a call refused by it is told."""

import asyncio
import time

import pytest

from gradserve.server.service.admission import MemoryBudget
from gradserve.server.service.sending import SendingBusy, SendingShare

MIB = 2**20
DEADLINE_S = 10


def _share(calls_mib: int = 512, message_mib: int = 64, wait_s: float = 10) -> SendingShare:
    return SendingShare(MemoryBudget(calls_mib * MIB, wait_s=wait_s), message_mib * MIB)


def _deadline() -> float:
    return time.monotonic() + DEADLINE_S


async def _parked(share: SendingShare) -> None:
    """Return once a reservation waits for the share."""
    while share.waiting == 0:
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    "calls_mib, message_mib, share_mib",
    [(512, 64, 128), (2048, 64, 512), (256, 64, 128), (100, 64, 100)],
)
def test_the_share_is_a_quarter_of_the_calls_budget_and_holds_two_largest_messages(
    calls_mib, message_mib, share_mib
):
    """A quarter, but never less than two copies of the largest message (so any reply that
    may be sent fits it), nor more than the calls' budget."""
    share = _share(calls_mib, message_mib)
    assert share.total == share_mib * MIB
    assert share.smallest == calls_mib * MIB // 256


def test_one_connection_holds_at_most_half_the_share_once_it_holds_any():
    async def scenario():
        share = _share()  # 128 MiB
        first = share.reservation("a")
        await first.resize(70 * MIB, _deadline())  # more than half: it held nothing
        second = share.reservation("a")
        # The share has room for it (70 + 10 of 128), but not the connection's half:
        waiting = asyncio.create_task(second.resize(10 * MIB, _deadline()))
        other = share.reservation("b")
        await other.resize(20 * MIB, _deadline())  # another connection is not held up
        await asyncio.wait_for(_parked(share), 5)  # the connection's second reply waits
        assert not waiting.done() and share.by_connection == {"a": 70 * MIB, "b": 20 * MIB}
        first.release()
        await asyncio.wait_for(waiting, 5)
        assert share.by_connection == {"a": 10 * MIB, "b": 20 * MIB}
        assert share.used == 30 * MIB
        third = share.reservation("a")
        await asyncio.wait_for(third.resize(54 * MIB, _deadline()), 5)  # up to half exactly
        assert share.by_connection == {"a": 64 * MIB, "b": 20 * MIB}
        for reservation in (second, third, other):
            reservation.release()
        assert share.used == 0 and share.by_connection == {}

    asyncio.run(scenario())


def test_a_reply_that_finds_the_share_held_is_refused_naming_it_and_holds_nothing():
    async def scenario():
        share = _share(wait_s=0.05)
        await share.reservation("a").resize(120 * MIB, _deadline())
        late = share.reservation("b")
        with pytest.raises(SendingBusy) as caught:
            await late.resize(60 * MIB, _deadline())
        assert late.bytes == 0 and share.by_connection == {"a": 120 * MIB}
        message = str(caught.value)
        assert "needs an estimated 60.0 MiB" in message and "(128.0 MiB:" in message
        assert "share for unary replies" in message and "EvaluateStream" in message
        assert caught.value.budget == 128 * MIB and caught.value.needed == 60 * MIB

    asyncio.run(scenario())


def test_a_reservation_shrunk_to_the_reply_gives_the_rest_back():
    async def scenario():
        share = _share()
        reservation = share.reservation("a")
        await reservation.resize(50 * MIB, _deadline())
        await reservation.resize(30 * MIB, _deadline())
        assert share.used == 30 * MIB and share.by_connection == {"a": 30 * MIB}

    asyncio.run(scenario())
