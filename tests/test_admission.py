"""The memory budget: what never fits, what waits, what is refused, what never waits."""

import asyncio
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gradserve.server.service import admission
from gradserve.server.service.admission import BudgetBusy, MemoryBudget, NeverFits
from gradserve.server.service.calls import CallScope

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


def test_a_budget_with_an_arriving_share_names_it():
    budget = MemoryBudget(1024 * MIB, reserved=256 * MIB, arriving=128 * MIB)
    assert budget.total == 640 * MIB
    assert budget.describe() == (
        "640.0 MiB: max-memory-mb = 1024 less plan-cache-mb = 256 less max-arriving-mb = 128"
    )


def test_a_charge_grown_past_the_whole_budget_never_fits_and_waits_for_nothing():
    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=30)
        charge = budget.charge()
        await charge.resize(80 * MIB, deadline=time.monotonic() + 60)
        with pytest.raises(NeverFits):  # 120 MiB in all: growing by 40 would fit, the call not
            await asyncio.wait_for(charge.resize(120 * MIB, time.monotonic() + 60), 5)
        assert charge.bytes == 80 * MIB and budget.used == 80 * MIB and budget.waiting == 0

    _run(scenario())


def test_refusals_state_the_budget_and_the_estimate_in_mib():
    """The messages a client reads: the call's estimate and the budget, in MiB, and the
    plan cache's share of max-memory-mb when one is reserved."""

    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=0.01, reserved=30 * MIB)
        with pytest.raises(NeverFits) as never:
            await budget.charge().resize(75 * MIB, deadline=time.monotonic() + 10)
        assert "an estimated 75.0 MiB" in str(never.value)
        assert "70.0 MiB: max-memory-mb = 100 less plan-cache-mb = 30: send" in str(never.value)
        without_cache = MemoryBudget(100 * MIB)
        with pytest.raises(NeverFits) as never:
            await without_cache.charge().resize(101 * MIB, deadline=time.monotonic() + 10)
        assert "calls, 100.0 MiB: max-memory-mb = 100: send" in str(never.value)
        await budget.charge().resize(60 * MIB, deadline=time.monotonic() + 10)
        with pytest.raises(BudgetBusy) as busy:
            await budget.charge().resize(MIB * 3 // 2 * 10, deadline=time.monotonic() + 10)
        assert "an estimated 15.0 MiB" in str(busy.value)

    _run(scenario())


def test_the_default_wait_is_the_one_the_docs_state():
    """docs/running-safely.md: a call that fits "waits up to N s for calls ahead of it"."""
    page = (Path(__file__).parents[1] / "docs" / "running-safely.md").read_text()
    documented = re.search(r"waits up to ([\d.]+) s for calls ahead of it", page)
    assert documented, "running-safely.md no longer states the wait"
    assert MemoryBudget(100 * MIB).wait_s == float(documented.group(1))


@pytest.mark.parametrize("wait_s, deadline_s", [(0.0, 60), (30, 0)])
def test_a_call_with_no_wait_left_is_refused_before_memory_given_back_later_reaches_it(
    wait_s, deadline_s
):
    """wait_s 0, or a deadline now with a wait of 30 s: refused at the loop's next turn,
    even though the memory it needs is given back 0.3 s after it parked (timers fire in
    order of their time, so this does not depend on the machine's speed)."""

    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=wait_s)
        holder = budget.charge()
        await holder.resize(80 * MIB, deadline=time.monotonic() + 60)
        deadline = time.monotonic() + deadline_s
        late = asyncio.create_task(budget.charge().resize(50 * MIB, deadline))
        while budget.waiting == 0 and not late.done():
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)
        holder.release()
        with pytest.raises(BudgetBusy):
            await late
        assert budget.used == 0

    _run(scenario())


def test_a_refusal_after_waiting_states_how_long_the_call_waited(monkeypatch):
    """Read from the module's clock, replaced here by one that moves 1.5 s during the wait
    (the wait itself runs on the event loop's clock, which stays real)."""
    ticks = iter([1000.0, 1001.5])
    monkeypatch.setattr(admission, "time", SimpleNamespace(monotonic=lambda: next(ticks)))

    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=0.01)
        await budget.charge().resize(80 * MIB, deadline=5000.0)
        with pytest.raises(BudgetBusy, match=r"stayed in use by other calls for 1\.5 s"):
            await budget.charge().resize(50 * MIB, deadline=5000.0)

    _run(scenario())


def test_memory_given_back_while_no_call_waits_wakes_nothing():
    """Only waiting calls need waking: giving memory back schedules no task otherwise."""

    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=10)
        charge = budget.charge()
        await charge.resize(80 * MIB, deadline=time.monotonic() + 10)
        before = asyncio.all_tasks()
        await charge.resize(30 * MIB, deadline=time.monotonic() + 10)
        charge.release()
        assert asyncio.all_tasks() == before and budget.used == 0

    _run(scenario())


@pytest.mark.parametrize("size", [1, MIB // 3, MIB - 1, MIB])
def test_a_call_of_at_most_a_256th_of_the_budget_overdraws_a_full_budget(size):
    """With no wait allowed, a call that had to wait would be refused: these are not."""

    async def scenario():
        budget = MemoryBudget(256 * MIB, wait_s=0.0)
        await budget.charge().resize(256 * MIB, deadline=time.monotonic() + 10)
        await budget.charge().resize(size, deadline=time.monotonic() + 10)
        assert budget.used == 256 * MIB + size
        with pytest.raises(BudgetBusy):  # one byte more is not small
            await budget.charge().resize(MIB + 1, deadline=time.monotonic() + 10)

    _run(scenario())


def test_a_charge_held_at_once_is_held_as_resize_holds_it_and_one_that_is_not_holds_nothing():
    """``resize_now`` (a call's charge that needs no coroutine) takes and gives back as
    ``resize`` does, and declines, holding nothing, what ``resize`` would wait for or
    refuse."""
    budget = MemoryBudget(256 * MIB)
    holder, small, large = budget.charge(), budget.charge(), budget.charge()
    assert holder.resize_now(200 * MIB) and budget.used == 200 * MIB
    assert small.resize_now(MIB) and budget.used == 201 * MIB  # small: may overdraw
    assert not large.resize_now(100 * MIB)  # would wait for memory
    assert not large.resize_now(257 * MIB)  # never fits
    assert large.bytes == 0 and budget.used == 201 * MIB
    assert holder.resize_now(50 * MIB) and budget.used == 51 * MIB  # shrinking gives back
    assert large.resize_now(100 * MIB) and budget.used == 151 * MIB


def test_a_call_s_admission_that_fits_is_held_before_it_is_awaited():
    async def scenario():
        budget = MemoryBudget(256 * MIB, wait_s=0.05)
        call = SimpleNamespace(charge=budget.charge(), deadline=time.monotonic() + 10)
        fits = CallScope.admit(call, 10 * MIB)
        assert not asyncio.iscoroutine(fits) and budget.used == 10 * MIB
        await fits
        budget.charge().resize_now(240 * MIB)
        waits = CallScope.admit(call, 20 * MIB)  # 10 MiB more than is left: the wait
        assert asyncio.iscoroutine(waits) and call.charge.bytes == 10 * MIB
        with pytest.raises(BudgetBusy):
            await waits
        assert budget.used == 250 * MIB and call.charge.bytes == 10 * MIB

    _run(scenario())


class _Holder:
    """A call as the ledger by kind sees it: a method and what it does now."""

    connection = ""

    def __init__(self, method: str, doing: str) -> None:
        self.method, self.doing = method, doing

    def held_as(self) -> tuple[str, str]:
        return self.method, self.doing


def test_the_ledger_by_kind_names_who_holds_the_budget_and_forgets_who_let_go():
    async def scenario():
        budget = MemoryBudget(100 * MIB, wait_s=10)
        sender = _Holder("EvaluateStream", "sending")
        streams = [budget.charge(sender) for _ in range(3)]
        for charge in streams:
            assert charge.resize_now(10 * MIB)
        computing = budget.charge(_Holder("Evaluate", "computing"))
        await computing.resize(40 * MIB, deadline=time.monotonic() + 10)
        waiter = budget.charge(_Holder("EvaluateStream", "waiting_for_memory"))
        waiter.resize_now(MIB)  # within the small calls' overdraft: held at once
        waiting = asyncio.create_task(waiter.resize(50 * MIB, time.monotonic() + 10))
        while budget.waiting == 0:
            await asyncio.sleep(0)
        assert waiter.waiting
        held, calls = budget.held_by_kind()
        assert held == {
            ("EvaluateStream", "sending"): 30 * MIB,
            ("Evaluate", "computing"): 40 * MIB,
            ("EvaluateStream", "waiting_for_memory"): MIB,
        }
        assert calls[("EvaluateStream", "sending")] == 3
        assert sum(held.values()) == budget.used
        sender.doing = "computing"  # the kind is asked when the ledger is read
        streams[0].release()
        computing.resize_now(0)
        await asyncio.wait_for(waiting, 5)
        assert not waiter.waiting
        held, calls = budget.held_by_kind()
        assert held == {
            ("EvaluateStream", "computing"): 20 * MIB,
            ("EvaluateStream", "waiting_for_memory"): 50 * MIB,
        }
        assert calls == {
            ("EvaluateStream", "computing"): 2,
            ("EvaluateStream", "waiting_for_memory"): 1,
        }
        for charge in [*streams, waiter]:
            charge.release()
        assert budget.held_by_kind() == ({}, {}) and budget.used == 0

    _run(scenario())
