"""The order in which waiting calls get memory given back (service/admission.py): the call
whose connection holds the least first, the oldest among equals; a later call never takes
what an earlier one waits for, and one that can never be served holds up the others only
for its wait."""

import asyncio
import time

import pytest

from gradserve.server.service.admission import BudgetBusy, MemoryBudget

MIB = 2**20


class _Call:
    """A charge's holder as the budget sees it: its connection (and a kind for the ledger)."""

    def __init__(self, connection: str) -> None:
        self.connection = connection

    def held_as(self) -> tuple[str, str]:
        return "EvaluateStream", "waiting_for_memory"


def _deadline() -> float:
    return time.monotonic() + 60


async def _parked(budget: MemoryBudget, count: int) -> None:
    """Return once ``count`` calls wait (a call that does not wait fails the test)."""

    async def parking() -> None:
        while budget.waiting < count:
            await asyncio.sleep(0)

    await asyncio.wait_for(parking(), 5)


def _waits(budget: MemoryBudget, connection: str, nbytes: int):
    """A call of ``connection`` growing to ``nbytes``, as a task, and its charge."""
    charge = budget.charge(_Call(connection))
    return charge, asyncio.create_task(charge.resize(nbytes, _deadline()))


def test_a_call_that_fits_does_not_take_what_an_earlier_call_waits_for():
    """28 MiB wait for memory; a later call of 20 MiB would fit what is given back first,
    but it is the earlier call's: the later one waits its turn. (Before, the later call took
    it at once and the earlier one waited on, here until refused.)"""

    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=30)
        holder = budget.charge(_Call("abuser"))
        await holder.resize(90 * MIB, _deadline())
        first, first_task = _waits(budget, "client", 28 * MIB)
        await _parked(budget, 1)
        holder.resize_now(75 * MIB)  # 25 MiB free: not yet enough for the first
        later = budget.charge(_Call("client"))
        assert not later.resize_now(20 * MIB)  # it would fit, but a call waits before it
        later_task = asyncio.create_task(later.resize(20 * MIB, _deadline()))
        await _parked(budget, 2)
        assert first.bytes == later.bytes == 0 and budget.used == 75 * MIB
        holder.resize_now(62 * MIB)  # 38 MiB free: the first call's turn, not both
        await asyncio.wait_for(first_task, 5)
        assert first.bytes == 28 * MIB and later.bytes == 0 and budget.waiting == 1
        holder.release()
        await asyncio.wait_for(later_task, 5)
        assert budget.used == 48 * MIB and budget.waiting == 0

    asyncio.run(scenario())


def test_calls_of_the_same_size_are_served_in_the_order_they_came():
    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=30)
        holder = budget.charge(_Call("abuser"))
        await holder.resize(90 * MIB, _deadline())
        waiting = [_waits(budget, "client", 30 * MIB) for _ in range(3)]
        await _parked(budget, 3)
        served = []
        for charge, task in waiting:
            task.add_done_callback(lambda _task, charge=charge: served.append(charge))
        for held in (60, 30, 0):  # 30 MiB more given back at each step: one call served
            holder.resize_now(held * MIB)
            await asyncio.wait_for(_served(served, 90 - held), 5)
        assert served == [charge for charge, _ in waiting]
        assert budget.used == 90 * MIB

    async def _served(served, mib):
        while sum(charge.bytes for charge in served) < mib * MIB:
            await asyncio.sleep(0)

    asyncio.run(scenario())


def test_memory_goes_first_to_the_connection_holding_the_least():
    """A connection holding 40 MiB waits with its call from before; another connection,
    holding nothing, comes later: it is served first. Then the first one's."""

    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=30)
        busy = budget.charge(_Call("busy"))
        await busy.resize(40 * MIB, _deadline())
        holder = budget.charge(_Call("holder"))
        await holder.resize(50 * MIB, _deadline())
        mine, mine_task = _waits(budget, "busy", 30 * MIB)
        await _parked(budget, 1)
        other, other_task = _waits(budget, "other", 30 * MIB)
        await _parked(budget, 2)
        holder.resize_now(30 * MIB)  # 30 MiB free: room for one of them
        await asyncio.wait_for(other_task, 5)
        assert other.bytes == 30 * MIB and mine.bytes == 0
        assert budget.by_connection == {"busy": 40 * MIB, "holder": 30 * MIB, "other": 30 * MIB}
        holder.release()
        await asyncio.wait_for(mine_task, 5)
        assert budget.by_connection == {"busy": 70 * MIB, "other": 30 * MIB}

    asyncio.run(scenario())


@pytest.mark.parametrize("leaving", ["refused", "cancelled"])
def test_a_call_the_budget_has_no_room_for_holds_up_later_ones_only_until_it_leaves(leaving):
    """The first call in order needs 60 MiB, and only 50 are free until the test ends: a
    later call of 30 MiB, which would fit, waits behind it until it leaves, refused at the
    end of its wait (its deadline, 0.2 s away) or cancelled, and is then served. The first
    call holds nothing; the later one needed no memory given back."""

    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=30)
        holder = budget.charge(_Call("abuser"))
        await holder.resize(50 * MIB, _deadline())
        huge = budget.charge(_Call("huge"))
        deadline = time.monotonic() + 0.2 if leaving == "refused" else _deadline()
        huge_task = asyncio.create_task(huge.resize(60 * MIB, deadline))
        await _parked(budget, 1)
        later, later_task = _waits(budget, "later", 30 * MIB)
        await _parked(budget, 2)
        assert later.bytes == 0  # held up: it came after the huge call
        if leaving == "refused":
            with pytest.raises(BudgetBusy):
                await asyncio.wait_for(huge_task, 5)
        else:
            huge_task.cancel()
        await asyncio.wait_for(later_task, 5)
        assert huge.bytes == 0 and later.bytes == 30 * MIB
        assert budget.waiting == 0 and budget.used == 80 * MIB

    asyncio.run(scenario())


def test_small_calls_still_never_wait_behind_waiting_calls():
    async def scenario():
        budget = MemoryBudget(256 * MIB, wait_s=30)
        holder = budget.charge(_Call("abuser"))
        await holder.resize(250 * MIB, _deadline())
        _, waiting = _waits(budget, "client", 100 * MIB)
        await _parked(budget, 1)
        small = budget.charge(_Call("client"))
        assert small.resize_now(MIB)  # a 256th of the budget: at once
        assert budget.used == 251 * MIB
        waiting.cancel()

    asyncio.run(scenario())
