"""The compute slots: how many calls run work on the evaluation threads at once, shared by
when each call began and the CPU it has used, so that calls that compute for seconds fall
behind the others whoever sends them.

Issue 19's soak: handing a freed slot to the waiting call whose *connection* held the
fewest slots made one connection of 32 legitimate clients worth as much as one abuser's
call. Each abuser connection got a slot as soon as it asked and held it for seconds (a
wide HVP's 1.5 s step, a long chain over 100,000 rows), and the legitimate calls (50-150
ms of CPU each) shared what was left: their p99 went to 4.3x of calm. So here:

- **First come, unless it computed long.** A freed slot goes to the waiting call whose
  key is the least: when it first asked for a slot, later by 1 / ``RATE`` (4) seconds
  per second of CPU it has used beyond ``LONG`` (its steps' ``time.thread_time``).
  Calls that have not computed long go in the order they came, so that those begun
  first end first: least CPU first let small calls pass large streams half done (a
  soak: small calls' p50 halved, large streams' p50 up a third and the p99 up with it;
  more streams in flight, each holding its request while waiting for memory). A call
  that has computed for seconds falls behind the calls that came after it, and still
  gets its turn: it may use a quarter of a core over its life.
- **Slices.** A step that has computed a ``SLICE`` since it got its slot, while a call that
  would come ``LEAD`` before it waits, gives its slot up at its next stop check and parks
  its thread until it is its turn again (``CallScope``). Calls of like cost do not slice
  one another (keyed by arrival, a later call never passes a step by the lead): 20
  large streams of 150 ms each, shared in turns, all end late, where one after the other
  most end early (a soak slicing by CPU alone: the large streams' p50 went from 712 to
  1,028 ms without abusers). A parked step holds its thread
  and its memory (it still holds them), not a slot: the executor has ``PARKED`` threads
  per slot beyond the slots, and at most that many steps park, so that every slot granted
  has a thread to run on.
- **Pauses.** Slots are not the CPU: with none waiting for a slot, a wide HVP's thread
  still took the GIL and the cores from the event loop and the legitimate calls' threads
  (a soak: 7 wide HVPs done in 20 s, legitimate p99 3.2x of calm). So a step of a call
  that has computed ``LONG`` pauses for up to ``PAUSE`` after each slice while a call
  that has not is in progress (a call that comes to wait for its slot ends the pause,
  and parks it): beside others a long call uses ``RATE`` of a core; alone, all of it.
- **A share per connection.** While a short call (under ``LONG`` of CPU) of another
  connection waits, a connection holding ``count - 1`` slots gets no more: many calls on
  one connection cannot shut out another client's short call. A long call gets no such
  share: kept for it, a slot went to an abuser's wide HVP whenever it asked, a quarter of
  the threads and half the cores of a 2-core machine (a soak with that abuser alone: the
  legitimate calls' p99 at 2.9x of calm); it gets its turn by when it came. A connection
  alone uses every slot (no slot stays idle while a call waits)."""

import asyncio
import math
import time
from collections.abc import Callable

from gradserve.server.service.counts import add_count

RATE = 0.25  # of a core a call that has computed LONG may use before it falls behind
SLICE = 0.05  # seconds of a step's CPU before it gives its slot to a call before it
LEAD = 0.25  # a waiting call's lead (key seconds) to take a long step's slot: 60 ms of CPU
PARKED = 1  # steps that may park, per slot (the executor's threads beyond the slots)
LONG = 0.25  # seconds of CPU after which a call has computed long
PAUSE = SLICE * (1 / RATE - 1)  # a long step's pause after each slice: RATE of a core


def queue_key(since: float, used: float) -> float:
    """A call's place in the queue, the smallest first: when it first asked for a slot
    (monotonic seconds), later by 1 / RATE seconds per second of CPU it has used beyond
    LONG. A key does not change while its call waits."""
    return since + max(0.0, used - LONG) / RATE


class Waiter:
    """A call waiting for a slot: ``granted()`` is called on the loop once it holds one."""

    __slots__ = ("connection", "granted", "key", "short")

    def __init__(
        self, connection: str, since: float, used: float, granted: Callable[[], bool]
    ) -> None:
        self.connection = connection
        self.key = queue_key(since, used)
        self.short = used < LONG  # a call its connection's share is kept for
        self.granted = granted  # False: the waiter is gone, the slot goes to the next


class ComputeSlots:
    """``count`` slots, each held by one call's work on the executor (used on the loop;
    ``first_key`` and ``parked`` are read from the executor's threads too)."""

    clock = staticmethod(time.monotonic)  # of the waits that age the calls

    def __init__(self, count: int) -> None:
        self.count = count
        self.free = count
        self.share = max(1, count - 1)  # a connection's slots while others wait
        self.by_connection: dict[str, int] = {}  # slots held, by connection
        self._waiting: list[Waiter] = []
        self.first_key = math.inf  # of the waiter the next free slot goes to
        self.parked = 0  # steps parked on their threads (``CallScope``)
        self.pauses = 0  # the pauses of long steps beside shorter calls, so far
        self.max_parked = PARKED * count

    async def acquire(self, connection: str, since: float | None = None, used: float = 0.0) -> None:
        """Wait for a slot for a call of ``connection`` that first asked for one at
        ``since`` (now when None) and has used ``used`` seconds of CPU since; hold it
        until ``release(connection)``."""
        if self.free and not self._waiting:
            self._hold(connection)
            return
        given = asyncio.get_running_loop().create_future()

        def granted() -> bool:
            if given.cancelled():
                return False
            given.set_result(None)
            return True

        waiter = self.wait(connection, self.clock() if since is None else since, used, granted)
        try:
            await given
        except asyncio.CancelledError:
            if given.done() and not given.cancelled():  # a slot came with the cancel
                self.release(connection)
            else:
                self.withdraw(waiter)
            raise

    def wait(
        self, connection: str, since: float, used: float, granted: Callable[[], bool]
    ) -> Waiter:
        """Queue a call of ``connection`` (``since`` and ``used`` as ``acquire``'s): once
        it holds a slot, ``granted()`` says so (False: it wants it no more)."""
        waiter = Waiter(connection, since, used, granted)
        self._waiting.append(waiter)
        self._hand_over()
        return waiter

    def withdraw(self, waiter: Waiter) -> bool:
        """Take ``waiter`` out of the queue; False when it was granted a slot already."""
        if waiter not in self._waiting:
            return False
        self._waiting.remove(waiter)
        self._note_first()
        return True

    def release(self, connection: str) -> None:
        add_count(self.by_connection, connection, -1)
        self.free += 1
        self._hand_over()

    def passes(self, since: float, used: float) -> bool:
        """Whether a call (``since`` and ``used`` as ``acquire``'s) would come ``LEAD``
        after the first waiter: then a step of it gives its slot up (read from threads)."""
        return self.first_key + LEAD < queue_key(since, used)

    def _hold(self, connection: str) -> None:
        self.free -= 1
        add_count(self.by_connection, connection, 1)

    def _next(self) -> Waiter | None:
        """The waiter the next free slot goes to: the least key, or when its connection
        holds its share, the least key of the short calls of connections under theirs."""
        if not self._waiting:
            return None
        held = self.by_connection.get
        first = min(self._waiting, key=lambda waiter: waiter.key)  # the oldest of equals
        if held(first.connection, 0) < self.share:
            return first
        short = [
            waiter
            for waiter in self._waiting
            if waiter.short and held(waiter.connection, 0) < self.share
        ]
        return min(short, key=lambda waiter: waiter.key) if short else first

    def _hand_over(self) -> None:
        """Give the free slots to the waiting calls that come first."""
        while self.free and self._waiting:
            waiter = self._next()
            self._waiting.remove(waiter)
            self._hold(waiter.connection)
            if not waiter.granted():
                add_count(self.by_connection, waiter.connection, -1)
                self.free += 1
        self._note_first()

    def _note_first(self) -> None:
        waiter = self._next()
        self.first_key = math.inf if waiter is None else waiter.key
