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
        await asyncio.sleep(0)  # let it start waiting
        assert not waiting.done() and budget.used == 80 * MIB
        holder.release()
        await asyncio.wait_for(waiting, 5)
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
