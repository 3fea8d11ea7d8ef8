"""Request bytes still arriving, bounded in total: reads of request messages need a slot.

grpc.aio hands a handler only complete messages, so a request cannot be charged byte by
byte as it arrives. What grpc core lets in is decided by HTTP/2 flow control instead: the
server announces a small window per stream (``STREAM_WINDOW_BYTES``, with grpc's BDP
probing off so that it never grows), and opens a stream's window to the size of its
message only while the handler has a read pending on it. The methods are registered as
request-streaming (``servicer.handlers``), so a handler starts before reading: a stream
whose message nobody has asked for can push at most ``STREAM_WINDOW_BYTES``.

A read may therefore let grpc take a whole message of up to the message-size limit, and
each read holds a slot of the ``ArrivalGate`` while pending: ``max-arriving-mb`` divided by
that limit is the number of reads pending at once (at least one), so the bytes still
arriving stay within ``max-arriving-mb``, a share of the memory budget (or within one
message, when the message-size limit is the larger). A read that finds every slot taken
waits; a slot held for longer than ``hold_s`` while another read waits is taken back: its
call ends with RESOURCE_EXHAUSTED (retryable) naming the setting. A slow sender is also
ended by the request timeout or its deadline (``CallScope.receive``).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable

STREAM_WINDOW_BYTES = 16 * 1024  # what a stream may send before the handler reads
READ_HOLD_S = 0.5  # a read slot held this long is taken back when another read waits
# grpc core's options for the above: a fixed initial window per stream.
FLOW_CONTROL_OPTIONS = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
]


class ArrivalGate:
    """The read slots of one server process (used on its event loop only)."""

    def __init__(self, max_bytes: int, message_bytes: int, hold_s: float = READ_HOLD_S) -> None:
        self.total = max_bytes
        self.message_bytes = message_bytes
        self.slots = max(1, max_bytes // message_bytes)  # one read is always allowed
        self.hold_s = hold_s
        self.taken_back = 0  # slots taken back from reads held too long, since start
        # since when each read holds its slot (oldest first), and how to end its call (None
        # once it is being taken back)
        self._holders: dict[object, tuple[float, Callable[[Callable], None] | None]] = {}
        self._freed: asyncio.Condition | None = None  # made on the loop, at first use

    @property
    def used(self) -> int:
        """The bytes that the reads pending now may let arrive, at most."""
        return len(self._holders) * self.message_bytes

    async def read(self, receive: Callable[[], Awaitable], take_back: Callable[[Callable], None]):
        """``await receive()`` holding a slot, waiting for one first if need be (the caller
        bounds the whole in time). If the slot is taken back, ``take_back(give_back)`` is
        called: it must end the read's call and call ``give_back()`` once the call has
        ended, which frees the slot."""
        key = object()
        await self._acquire(key, take_back)
        try:
            return await receive()
        finally:
            if self._holders.get(key, (0, take_back))[1] is not None:  # else: being taken back
                self._release(key)

    async def _acquire(self, key: object, take_back: Callable[[Callable], None]) -> None:
        while len(self._holders) >= self.slots:
            if (oldest := self._oldest()) is not None and time.monotonic() >= oldest + self.hold_s:
                self._take_back_oldest()
            if self._freed is None:
                self._freed = asyncio.Condition()
            # Wait for a slot given back, or for the oldest read to have held its slot too
            # long. A call taken back gives its slot back once it has ended, so that its
            # bytes and the next read's never add up.
            oldest = self._oldest()
            wait = None if oldest is None else oldest + self.hold_s - time.monotonic()
            async with self._freed:
                try:
                    async with asyncio.timeout(wait):
                        await self._freed.wait()
                except TimeoutError:
                    pass
        self._holders[key] = (time.monotonic(), take_back)

    def _oldest(self) -> float | None:
        """Since when the oldest read not being taken back holds its slot."""
        return min((since for since, end in self._holders.values() if end), default=None)

    def _take_back_oldest(self) -> None:
        for key, (since, end_call) in self._holders.items():
            if end_call is not None:
                self._holders[key] = (since, None)  # held until its call has ended
                self.taken_back += 1
                end_call(lambda key=key: self._release(key))
                return

    def _release(self, key: object) -> None:
        if self._holders.pop(key, None) is not None and self._freed is not None:
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._freed:
            self._freed.notify_all()
