"""Memory admission: every call in flight is charged to one budget before it allocates.

A call's memory is estimated from its fields' lengths (``engine/memory.py``) and charged in
steps as it learns more: the request on arrival, the compilation once the graph's size is
known, the evaluation and the reply once the plan is. The charge stays until the reply has
been sent, so replies waiting for a slow reader count too; a large unary reply also holds
a place in the sending share (``sending``) from before it is evaluated, so that such
replies leave the rest of the budget to computing. A call charged more than an eighth of
the budget holds its whole charge in the large calls' share as well (``large_calls``):
together, the large calls of every kind hold at most half the budget, so the ordinary
calls always have the other half.

A call that can never fit the budget is refused (RESOURCE_EXHAUSTED, naming the limit and
the estimate). One that fits but finds the budget in use waits up to ``wait_s`` for calls
ahead of it to finish, then is refused; retrying later may then succeed. Small calls (at
most ``budget / 256``) never wait: they may overdraw the budget by at most that much each,
so the many small calls of a shared server keep flowing while a large one holds most of
the budget.

Memory given back goes to the waiting calls in order, as the compute slots go
(``compute_slots``): the call whose connection holds the least of the budget first, the
oldest among equals. A call that arrives while others wait joins them in that order, so
it cannot take what an earlier call of the same connection, or of a connection holding
less, waits for. Before, every waiter was woken and took memory only if it fitted at
that instant, while a new call that fitted took it at once: a 28 MiB stream could wait
its whole 5 s while smaller or later calls took every byte given back. The first waiter
in order that the budget has no room for holds up the ones after it (else it would
starve as before), for at most its wait: then it is refused and the next one's turn
comes. A waiter held back only by its own terms (its connection's half of the sending
share) holds up nobody.
"""

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
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

    connection: str  # the peer whose calls it counts to, for the order of waiters

    def held_as(self) -> tuple[str, str]:
        """The kind of call (its method) and what it does now (computing, sending, ...)."""


@dataclass(eq=False)
class _Waiter:
    """A charge waiting to grow to ``target`` bytes."""

    charge: "Charge"
    target: int
    granted: asyncio.Future


class MemoryBudget:
    """One server process's budget, shared by its calls (used on the event loop only).

    ``reserved`` bytes of ``total_bytes`` are kept for what outlives calls (the plan
    cache) and ``arriving`` for request bytes still arriving (``arrival.ArrivalGate``); the
    calls share the rest, ``total``."""

    # The large calls' share of this budget (``large_calls``), when it has one: a charge
    # above its threshold is held in it as well.
    large: "MemoryBudget | None" = None

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
        self.ceiling = self.total  # a call charged more never fits
        self._waiters: list[_Waiter] = []  # in the order they came
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
    def by_connection(self) -> Counter:
        """The bytes held, by the charges' connection (counted when asked: only the
        order of waiters and the sending share's terms need it, not each charge)."""
        held = Counter()
        for charge in self.holding:
            held[charge.connection] += charge.bytes
        return held

    @property
    def waiting(self) -> int:
        """Calls waiting for memory now (parked until another call gives some back)."""
        return len(self._waiters)

    def describe(self) -> str:
        """The budget's settings, as a message names them."""
        text = f"{_mib(self.total)}: max-memory-mb = {self.configured // 2**20}"
        text += f" less plan-cache-mb = {self.reserved // 2**20}" if self.reserved else ""
        return text + (f" less max-arriving-mb = {self.arriving // 2**20}" if self.arriving else "")

    def charge(self, holder: Holder | None = None) -> "Charge":
        return Charge(self, holder)

    def _has_room(self, charge: "Charge", amount: int) -> bool:
        """Whether the budget has room for ``charge`` to take ``amount`` more (the
        charge's own terms, ``Charge._may_take``, aside)."""
        return self.used + amount <= self.total

    def _fits_now(self, charge: "Charge", amount: int, total_after: int) -> bool:
        """Whether ``charge`` may take ``amount`` more, then holding ``total_after``,
        without waiting: a small call always, another only when no call waits."""
        if total_after > self.ceiling:
            return False
        if total_after <= self.total // SMALL_FRACTION:
            return True
        return not self._waiters and self._has_room(charge, amount) and charge._may_take(amount)

    def _busy(self, needed: int, waited: float) -> BudgetBusy:
        return BudgetBusy(needed, self, waited)

    def _grant(self, charge: "Charge", amount: int, target: int) -> None:
        self.used += amount
        charge._hold(target)

    async def _take(
        self, charge: "Charge", target: int, deadline: float, since: float | None
    ) -> float | None:
        """Grow ``charge`` to ``target`` bytes, waiting in order as the module docstring
        says; refused after waiting ``wait_s`` since ``since`` (None: from now, if it
        must wait). Returns when it started waiting (None: it did not)."""
        amount = target - charge.bytes
        if target > self.ceiling:
            raise NeverFits(target, self)
        if self._fits_now(charge, amount, target):
            self._grant(charge, amount, target)
            return since
        if since is None:
            since = time.monotonic()
            timeout = min(self.wait_s, deadline - since)
        else:
            timeout = min(since + self.wait_s, deadline) - time.monotonic()
        waiter = _Waiter(charge, target, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._hand_over()  # it may come first: its connection may hold the least
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await waiter.granted
        except TimeoutError:
            if not self._leave(waiter):
                raise self._busy(target, time.monotonic() - since) from None
        except asyncio.CancelledError:
            self._leave(waiter)  # what came with the cancel goes back with the call's end
            raise
        return since

    def _leave(self, waiter: _Waiter) -> bool:
        """``waiter`` stops waiting: whether it got its memory first. Its leaving may let
        the waiters it held up take theirs."""
        if waiter.granted.done() and not waiter.granted.cancelled():
            return True
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            self._hand_over()
        return False

    def _hand_over(self) -> None:
        """Grow the waiting charges in order (the module docstring says which) while the
        budget has room for the first in order."""
        held = self.by_connection  # counted once, then kept up to date here
        while self._waiters:
            for waiter in sorted(self._waiters, key=lambda w: held[w.charge.connection]):
                charge, amount = waiter.charge, waiter.target - waiter.charge.bytes
                if waiter.granted.done():  # cancelled: its task takes it out
                    continue
                if not self._has_room(charge, amount):
                    return  # it holds up the ones after it
                if charge._may_take(amount):
                    self._waiters.remove(waiter)
                    self._grant(charge, amount, waiter.target)
                    held[charge.connection] += amount
                    waiter.granted.set_result(None)
                    break  # the order may have changed
            else:
                return

    def _give_back(self, amount: int) -> None:
        self.used -= amount
        if self._waiters and amount:
            self._hand_over()


class Charge:
    """What one call holds of the budget; ``release()`` gives it all back.

    Where the budget has a large calls' share, a charge above its threshold holds the
    same bytes there too (``_large``)."""

    waiting = False  # whether it waits for more of the budget now
    _large: "Charge | None" = None  # its part of the large calls' share, once it had one

    def __init__(self, budget: MemoryBudget, holder: Holder | None = None) -> None:
        self.budget = budget
        self.holder = holder
        self.bytes = 0

    @property
    def connection(self) -> str:
        """The connection whose calls it counts to (its holder's)."""
        return "" if self.holder is None else self.holder.connection

    def _hold(self, target: int) -> None:
        """Now hold ``target`` bytes (the budget's ``used`` is already changed)."""
        if target and not self.bytes:
            self.budget.holding.add(self)
        elif self.bytes and not target:
            self.budget.holding.discard(self)
        self.bytes = target

    def _may_take(self, amount: int) -> bool:
        """The charge's own terms for taking ``amount`` more, beside the budget's room."""
        return True

    def _large_part(self, target: int) -> int:
        """What a charge of ``target`` bytes holds of the large calls' share."""
        share = self.budget.large
        return target if share is not None and target > share.threshold else 0

    def _large_charge(self) -> "Charge":
        if self._large is None:
            self._large = self.budget.large.charge(self.holder)
        return self._large

    def resize_now(self, target: int) -> bool:
        """Hold ``target`` bytes if that needs no wait and no refusal; whether it did (if
        not, ``resize`` waits or refuses). Most charges fit: this spares them a coroutine."""
        change = target - self.bytes
        if change > 0:
            budget = self.budget
            if not budget._fits_now(self, change, target):
                return False
            share = budget.large  # ``_large_part``, inline: the small calls' path
            large = share is not None and target > share.threshold
            if large and not self._large_charge().resize_now(target):
                return False
            budget.used += change
            self._hold(target)
        elif change < 0:
            self._shrink(target)
        return True

    async def resize(self, target: int, deadline: float) -> None:
        """Hold ``target`` bytes: give back the difference, or take it (waiting or raising
        as the module docstring says): first in the large calls' share, for a large
        charge, then in the budget, one wait in all."""
        if target <= self.bytes:
            if target < self.bytes:
                self._shrink(target)
            return
        if target > self.budget.ceiling:
            raise NeverFits(target, self.budget)
        since, large = None, self._large_part(target)
        if large:
            since = await self._large_charge()._grow(large, deadline, since)
        try:
            await self._grow(target, deadline, since)
        except BaseException:
            self._shrink_large(self.bytes)  # the share's part it held before
            raise

    @property
    def waiting_for_large_share(self) -> bool:
        """Whether it waits for the large calls' share now (before the budget)."""
        return self._large is not None and self._large.waiting

    async def _grow(self, target: int, deadline: float, since: float | None) -> float | None:
        if target <= self.bytes:
            return since
        self.waiting = True
        try:
            return await self.budget._take(self, target, deadline, since)
        finally:
            self.waiting = False

    def _shrink(self, target: int) -> None:
        freed = self.bytes - target
        self._hold(target)
        self.budget._give_back(freed)
        if self._large is not None:
            self._shrink_large(target)

    def _shrink_large(self, target: int) -> None:
        large = self._large
        if large is not None and large.bytes > self._large_part(target):
            large._shrink(self._large_part(target))

    def release(self) -> None:
        if self.bytes or self._large is not None:
            self._shrink(0)
