"""The large calls' share (service/large_calls.py): the calls charged more than an eighth of
the budget hold at most half of it together, so the ordinary calls always have the
other half; one large call alone may hold more."""

import asyncio
import time

import pytest

from gradserve.server.service.admission import BudgetBusy, MemoryBudget
from gradserve.server.service.large_calls import LargeCallsBusy, share_large_calls
from gradserve.server.service.sending import SendingShare

MIB = 2**20
CALLS_MIB = 512  # issue 19's soak: 1024 less the plan cache's 256 less arriving's 256


class _Call:
    def __init__(self, connection: str, method: str = "Evaluate") -> None:
        self.connection, self.method = connection, method

    def held_as(self) -> tuple[str, str]:
        return self.method, "computing"


def _deadline() -> float:
    return time.monotonic() + 60


def _budget(wait_s: float = 30) -> MemoryBudget:
    budget = MemoryBudget(CALLS_MIB * MIB, wait_s=wait_s)
    share_large_calls(budget)
    return budget


async def _parked(budget: MemoryBudget, count: int) -> None:
    """Return once ``count`` calls wait (a call that does not wait fails the test)."""

    async def parking() -> None:
        while budget.waiting < count:
            await asyncio.sleep(0)

    await asyncio.wait_for(parking(), 5)


def test_the_share_is_half_the_budget_for_calls_above_an_eighth():
    budget = _budget()
    assert budget.large.total == 256 * MIB and budget.large.threshold == 64 * MIB


def test_large_calls_at_their_bounds_leave_an_ordinary_call_its_memory_at_once():
    """Issue 19's soak at its refusals, each abuser at its own bound: a batch's block, a
    wide HVP beside its request, two stalled 62 MB unary replies, each on a connection of
    its own, and eight never-read streams of 16 MiB. Before, they held 540 MiB of the
    512 between them and a client's 28.5 MiB stream waited, then was refused; now the
    large ones take turns within half the budget, and the stream is admitted at once."""

    async def scenario():
        budget = _budget()
        share = budget.large
        batch = budget.charge(_Call("batch"))
        assert batch.resize_now(178 * MIB)
        large = [("hvp", 296), ("stalled-1", 118), ("stalled-2", 118)]
        waiting = []
        for connection, mib in large:
            charge = budget.charge(_Call(connection))
            waiting.append((charge, asyncio.create_task(charge.resize(mib * MIB, _deadline()))))
        await _parked(share, 3)
        never_read = [budget.charge(_Call("never-read")) for _ in range(8)]
        assert all(charge.resize_now(16 * MIB) for charge in never_read)  # ordinary: at once
        stream = budget.charge(_Call("client", "EvaluateStream"))
        assert stream.resize_now(int(28.5 * MIB))  # no wait
        assert share.used == 178 * MIB and budget.used == (178 + 128 + 28.5) * MIB
        assert budget.waiting == 0  # the large calls wait for their share, not the budget
        assert all(charge.bytes == 0 for charge, _ in waiting)
        batch.release()  # the HVP's turn (it came first), alone in the share
        hvp, hvp_task = waiting[0]
        await asyncio.wait_for(hvp_task, 5)
        assert hvp.bytes == 296 * MIB and share.used == 296 * MIB
        assert share.waiting == 2  # the stalled replies wait on: the HVP is alone
        hvp.release()
        for _charge, task in waiting[1:]:
            await asyncio.wait_for(task, 5)  # both fit the share together
        assert share.used == 236 * MIB
        assert budget.used == (236 + 128 + 28.5) * MIB

    asyncio.run(scenario())


def test_without_the_share_the_same_calls_leave_the_ordinary_stream_waiting():
    """The counterpart of the test above on a budget without the share: the stream must
    wait (so that test shows what the share changes)."""

    async def scenario():
        budget = MemoryBudget(CALLS_MIB * MIB, wait_s=30)
        for connection, mib in [("batch", 178), ("stalled-1", 118), ("stalled-2", 118)]:
            assert budget.charge(_Call(connection)).resize_now(mib * MIB)
        for _ in range(8):
            budget.charge(_Call("never-read")).resize_now(16 * MIB)
        stream = budget.charge(_Call("client", "EvaluateStream"))
        assert not stream.resize_now(int(28.5 * MIB))

    asyncio.run(scenario())


def test_a_charge_crossing_the_threshold_holds_all_of_it_in_the_share_and_leaves_it_below():
    budget = _budget()
    share = budget.large
    charge = budget.charge(_Call("a"))
    assert charge.resize_now(64 * MIB) and share.used == 0  # an eighth exactly: ordinary
    assert charge.resize_now(70 * MIB) and share.used == 70 * MIB
    assert share.by_connection == {"a": 70 * MIB}
    assert charge.resize_now(20 * MIB) and share.used == 0 and budget.used == 20 * MIB
    charge.release()
    assert budget.used == 0 and share.used == 0 and share.by_connection == {}


def test_a_large_call_refused_after_its_wait_names_the_share_and_holds_nothing():
    async def scenario():
        budget = _budget(wait_s=0.05)
        held = budget.charge(_Call("batch"))
        assert held.resize_now(200 * MIB)
        late = budget.charge(_Call("hvp"))
        assert late.resize_now(20 * MIB)  # its request, ordinary
        with pytest.raises(LargeCallsBusy) as caught:
            await late.resize(100 * MIB, _deadline())
        assert isinstance(caught.value, BudgetBusy)  # a RESOURCE_EXHAUSTED quota failure
        assert late.bytes == 20 * MIB and budget.used == 220 * MIB
        assert budget.large.used == 200 * MIB and budget.large.refused == 1
        message = str(caught.value)
        assert "needs an estimated 100.0 MiB" in message
        assert "share for large calls (256.0 MiB: half the calls' budget" in message
        assert caught.value.budget == CALLS_MIB * MIB and caught.value.needed == 100 * MIB

    asyncio.run(scenario())


def test_a_large_call_that_gets_the_share_but_not_the_budget_gives_the_share_back():
    """Ordinary calls hold 400 MiB: a large call of 150 has the share's room but not the
    budget's. Refused after its wait, it holds neither."""

    async def scenario():
        budget = _budget(wait_s=0.05)
        for _ in range(16):
            assert budget.charge(_Call("many")).resize_now(25 * MIB)
        late = budget.charge(_Call("batch"))
        with pytest.raises(BudgetBusy):
            await late.resize(150 * MIB, _deadline())
        assert late.bytes == 0 and budget.large.used == 0 and budget.used == 400 * MIB

    asyncio.run(scenario())


def test_a_large_call_alone_may_hold_more_than_the_share_and_the_budget_still_bounds_it():
    budget = _budget()
    alone = budget.charge(_Call("hvp"))
    assert alone.resize_now(400 * MIB)  # more than the share: nothing else holds it
    assert not budget.charge(_Call("batch")).resize_now(80 * MIB)  # another large waits
    assert budget.charge(_Call("client")).resize_now(30 * MIB)  # an ordinary one does not
    assert not alone.resize_now(CALLS_MIB * MIB + 1)  # never fits the budget


def test_the_sending_share_is_unchanged_by_it():
    """A unary reply's reservation is charged to the sending share only; its call's charge
    (the two copies) to the budget and, when large, the large calls' share."""
    budget = _budget()
    sending = SendingShare(budget, 64 * MIB)
    reservation = sending.reservation("a")
    assert reservation.resize_now(124 * MIB) and sending.used == 124 * MIB
    assert budget.used == 0 and budget.large.used == 0
