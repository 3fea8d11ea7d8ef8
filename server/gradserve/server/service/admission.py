"""Memory admission: every call in flight is charged to one budget before it allocates.

A call's memory is estimated from its fields' lengths (``engine/memory.py``) and charged in
steps as it learns more: the request on arrival, the compilation once the graph's size is
known, the evaluation and the reply once the plan is. The charge stays until the reply has
been sent, so replies waiting for a slow reader count too; a large unary reply also holds
a place in the sending share (``sending``) from before it is evaluated, so that such
replies leave the rest of the budget to computing.

A call that can never fit the budget is refused (RESOURCE_EXHAUSTED, naming the limit and
the estimate). One that fits but finds the budget in use waits up to ``wait_s`` for calls
ahead of it to finish, then is refused; retrying later may then succeed. Small calls (at
most ``budget / 256``) never wait: they may overdraw the budget by at most that much each,
so the many small calls of a shared server keep flowing while a large one holds most of
the budget.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

DEFAULT_WAIT_S = 5.0
SMALL_FRACTION = 256  # a call of at most budget / SMALL_FRACTION bytes never waits
# The ledger by kind of holder (``MemoryBudget.held_by_kind``), as the metrics name it.
HELD_METRIC = "gradserve_memory_budget_held_bytes"
HELD_HELP = (
    "Bytes of the memory budget held by calls in flight, by method and by what the call "
    "does now (computing, sending: its reply waits for the reader, waiting_for_memory, ...)"
)
HOLDING_METRIC = "gradserve_memory_budget_holding_calls"
HOLDING_HELP = "Calls holding some of the memory budget, by method and by what they do now"
HELD_LABELS = ["method", "state"]


class NeverFits(Exception):
    """The call needs more than the whole budget."""

    def __init__(self, needed: int, budget: "MemoryBudget") -> None:
        self.needed, self.budget = needed, budget.total
        super().__init__(
            f"the call needs an estimated {_mib(needed)} of server memory, more than this "
            f"server's whole budget for calls, {budget.describe()}: send fewer nodes or "
            "rows, or start the server with a larger --max-memory-mb"
        )


class BudgetBusy(Exception):
    """The budget stayed in use by other calls for longer than the call may wait."""

    def __init__(self, needed: int, budget: "MemoryBudget", waited: float) -> None:
        self.needed, self.budget = needed, budget.total
        super().__init__(
            f"the call needs an estimated {_mib(needed)} of server memory and this server's "
            f"budget for calls ({budget.describe()}) stayed in use by other calls for "
            f"{waited:.1f} s; retry later"
        )


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


class Holder(Protocol):
    """Who holds a charge, for the ledger by kind (``MemoryBudget.held_by_kind``)."""

    def held_as(self) -> tuple[str, str]:
        """The kind of call (its method) and what it does now (computing, sending, ...)."""


class MemoryBudget:
    """One server process's budget, shared by its calls (used on the event loop only).

    ``reserved`` bytes of ``total_bytes`` are kept for what outlives calls (the plan
    cache) and ``arriving`` for request bytes still arriving (``arrival.ArrivalGate``); the
    calls share the rest, ``total``."""

    def __init__(
        self,
        total_bytes: int,
        wait_s: float = DEFAULT_WAIT_S,
        reserved: int = 0,
        arriving: int = 0,
    ) -> None:
        self.configured = total_bytes
        self.reserved = reserved
        self.arriving = arriving
        self.total = total_bytes - reserved - arriving
        self.wait_s = wait_s
        self.used = 0
        self._freed: asyncio.Condition | None = None  # made on the loop, at first use
        self._waiting = 0  # calls waiting for memory: only they need waking
        self.holding: set[Charge] = set()  # the charges holding bytes now

    def held_by_kind(self) -> tuple[Counter, Counter]:
        """The bytes held, and the charges holding them, by their holders' kind
        (``Holder.held_as``; ``("", "")`` for a charge without a holder). Safe to call
        from another thread (the metrics endpoint's): it copies the set at once."""
        held, calls = Counter(), Counter()
        for charge in list(self.holding):
            holder = charge.holder
            kind = ("", "") if holder is None else holder.held_as()
            held[kind] += charge.bytes
            calls[kind] += 1
        return held, calls

    @property
    def waiting(self) -> int:
        """Calls waiting for memory now (parked until another call gives some back)."""
        return self._waiting

    def describe(self) -> str:
        """The budget's settings, as a message names them."""
        text = f"{_mib(self.total)}: max-memory-mb = {self.configured // 2**20}"
        text += f" less plan-cache-mb = {self.reserved // 2**20}" if self.reserved else ""
        return text + (f" less max-arriving-mb = {self.arriving // 2**20}" if self.arriving else "")

    def charge(self, holder: Holder | None = None) -> "Charge":
        return Charge(self, holder)

    def _fits(self, amount: int) -> bool:
        return self.used + amount <= self.total

    def _fits_now(self, amount: int, total_after: int) -> bool:
        """Whether ``amount`` more, for a call then holding ``total_after``, may be taken
        without waiting (a call that can never fit does not)."""
        if total_after > self.total:
            return False
        return total_after <= self.total // SMALL_FRACTION or self._fits(amount)

    def _busy(self, needed: int, waited: float) -> BudgetBusy:
        return BudgetBusy(needed, self, waited)

    async def _take(
        self, amount: int, total_after: int, deadline: float, fits: Callable[[], bool] | None = None
    ) -> None:
        """Take ``amount`` more (``total_after`` in all for the caller) once ``fits()``
        (default: it fits the budget), waiting as the module docstring says."""
        if total_after > self.total:
            raise NeverFits(total_after, self)
        fits = fits or (lambda: self._fits(amount))
        if total_after <= self.total // SMALL_FRACTION or fits():
            self.used += amount
            return
        if self._freed is None:
            self._freed = asyncio.Condition()
        started = time.monotonic()
        timeout = max(0.0, min(self.wait_s, deadline - started))
        async with self._freed:
            self._waiting += 1
            try:
                # The wait parks this very task (asyncio.wait_for would start another): once
                # ``waiting`` counts a call, the next memory given back wakes it.
                async with asyncio.timeout(timeout):
                    await self._freed.wait_for(fits)
            except TimeoutError:
                raise self._busy(total_after, time.monotonic() - started) from None
            finally:
                self._waiting -= 1
            self.used += amount

    def _give_back(self, amount: int) -> None:
        self.used -= amount
        if self._waiting and amount:
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._freed:
            self._freed.notify_all()


class Charge:
    """What one call holds of the budget; ``release()`` gives it all back."""

    waiting = False  # whether it waits for more of the budget now

    def __init__(self, budget: MemoryBudget, holder: Holder | None = None) -> None:
        self.budget = budget
        self.holder = holder
        self.bytes = 0

    def _hold(self, target: int) -> None:
        """Now hold ``target`` bytes (the budget's ``used`` is already changed)."""
        if target and not self.bytes:
            self.budget.holding.add(self)
        elif self.bytes and not target:
            self.budget.holding.discard(self)
        self.bytes = target

    def resize_now(self, target: int) -> bool:
        """Hold ``target`` bytes if that needs no wait and no refusal; whether it did (if
        not, ``resize`` waits or refuses). Most charges fit: this spares them a coroutine."""
        change = target - self.bytes
        if change > 0:
            if not self.budget._fits_now(change, target):
                return False
            self.budget.used += change
        elif change < 0:
            self.budget._give_back(-change)
        self._hold(target)
        return True

    async def resize(self, target: int, deadline: float) -> None:
        """Hold ``target`` bytes: give back the difference, or take it (waiting or raising
        as the module docstring says)."""
        change = target - self.bytes
        if change > 0:
            self.waiting = True
            try:
                await self.budget._take(change, target, deadline, self._condition(change))
            finally:
                self.waiting = False
        elif change < 0:
            self.budget._give_back(-change)
        self._hold(target)

    def _condition(self, change: int) -> Callable[[], bool] | None:
        """When ``change`` more may be taken (None: once it fits the budget)."""
        return None

    def release(self) -> None:
        if self.bytes:
            self.budget._give_back(self.bytes)
            self._hold(0)
