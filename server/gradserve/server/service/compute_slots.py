"""The compute slots: how many calls run work on the evaluation threads at once, shared
fairly between connections.

``asyncio.Semaphore`` hands a freed slot to its oldest waiter, so one connection that queues
many long evaluations (wide HVPs, huge batches: issue 19's soak) keeps every slot, and
another client's call waits behind that whole queue. Here a freed slot goes to the waiting
call whose connection holds the fewest slots, the oldest first among equals: a call of
another connection waits at most for the first slot to free. A connection alone still
uses every slot (no slot stays idle while a call waits)."""

import asyncio
from collections import deque

from gradserve.server.service.counts import add_count


class ComputeSlots:
    """``count`` slots, each held by one call's work on the executor (used on the loop)."""

    def __init__(self, count: int) -> None:
        self.free = count
        self.by_connection: dict[str, int] = {}  # slots held, by connection
        self._waiting: deque[tuple[str, asyncio.Future]] = deque()

    async def acquire(self, connection: str) -> None:
        """Wait for a slot for ``connection``; hold it until ``release(connection)``."""
        if self.free and not self._waiting:
            self._hold(connection)
            return
        given = asyncio.get_running_loop().create_future()
        waiter = (connection, given)
        self._waiting.append(waiter)
        try:
            await given
        except asyncio.CancelledError:
            if given.done() and not given.cancelled():  # a slot came with the cancel
                self.release(connection)
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
            raise

    def release(self, connection: str) -> None:
        add_count(self.by_connection, connection, -1)
        self.free += 1
        self._hand_over()

    def _hold(self, connection: str) -> None:
        self.free -= 1
        add_count(self.by_connection, connection, 1)

    def _hand_over(self) -> None:
        """Give the free slots to the waiting calls whose connections hold the fewest."""
        while self.free and self._waiting:
            held = self.by_connection.get
            waiter = min(self._waiting, key=lambda waiter: held(waiter[0], 0))  # oldest of equals
            self._waiting.remove(waiter)
            connection, given = waiter
            if given.cancelled():
                continue
            self._hold(connection)
            given.set_result(None)
