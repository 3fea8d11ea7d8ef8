"""The memory budget: what never fits, what waits, what is refused, what never waits."""

import asyncio
import time

import pytest

from gradserve.server.service.admission import BudgetBusy, MemoryBudget, NeverFits

MIB = 2**20


def _run(coroutine):
    return asyncio.run(coroutine)


def test_a_call_bigger_than_the_whole_budget_never_fits():
    async def scenario():
        budget = MemoryBudget(100 * MIB)
        with pytest.raises(NeverFits) as caught:
            await budget.charge().resize(101 * MIB, deadline=time.monotonic() + 10)
        assert "max-memory-mb = 100" in str(caught.value)
        assert budget.used == 0

    _run(scenario())


def test_a_call_that_fits_later_waits_for_memory_given_back():
    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=10)
        holder, waiter = budget.charge(), budget.charge()
        await holder.resize(80 * MIB, deadline=time.monotonic() + 10)
        waiting = asyncio.create_task(waiter.resize(50 * MIB, deadline=time.monotonic() + 10))
        while budget.waiting == 0:  # until it is parked, waiting to be woken
            await asyncio.sleep(0)
        assert not waiting.done() and budget.used == 80 * MIB
        holder.release()
        await asyncio.wait_for(waiting, 5)  # woken by the release, not by its own wait
        assert budget.waiting == 0
        assert budget.used == 50 * MIB and waiter.bytes == 50 * MIB

    _run(scenario())


def test_a_call_still_waiting_after_the_wait_is_refused_and_holds_nothing():
    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=0.05)
        holder = budget.charge()
        await holder.resize(80 * MIB, deadline=time.monotonic() + 10)
        late = budget.charge()
        with pytest.raises(BudgetBusy):
            await late.resize(50 * MIB, deadline=time.monotonic() + 10)
        assert budget.used == 80 * MIB and late.bytes == 0

    _run(scenario())


def test_small_calls_never_wait_and_shrinking_gives_memory_back():
    async def scenario():
        budget = MemoryBudget(256 * MIB, wait_s=10)
        await budget.charge().resize(256 * MIB, deadline=time.monotonic() + 10)
        small = budget.charge()
        await asyncio.wait_for(small.resize(MIB, deadline=time.monotonic() + 10), 1)
        assert budget.used == 257 * MIB  # a small call may overdraw by its size
        await small.resize(MIB // 2, deadline=time.monotonic() + 10)
        assert budget.used == 256 * MIB + MIB // 2

    _run(scenario())


def test_the_wait_is_the_configured_one_not_the_calls_deadline():
    """wait_s 0.05 s against a deadline a minute away: refused long before the deadline."""

    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=0.05)
        await budget.charge().resize(80 * MIB, deadline=time.monotonic() + 60)
        late = budget.charge().resize(50 * MIB, deadline=time.monotonic() + 60)
        with pytest.raises(BudgetBusy):
            await asyncio.wait_for(late, 5)

    _run(scenario())


def test_a_charge_grown_past_the_whole_budget_never_fits_and_waits_for_nothing():
    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=30)
        charge = budget.charge()
        await charge.resize(80 * MIB, deadline=time.monotonic() + 60)
        with pytest.raises(NeverFits):  # 120 MiB in all: growing by 40 would fit, the call not
            await asyncio.wait_for(charge.resize(120 * MIB, time.monotonic() + 60), 5)
        assert charge.bytes == 80 * MIB and budget.used == 80 * MIB and budget.waiting == 0

    _run(scenario())
