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
waits, and a slot is taken back for it: at once from a connection not in good standing
holding more than its share of the slots (the slots divided among the connections holding
or waiting, at least one), from its oldest read once that has held its slot ``SETTLE_S``,
else from the read most overdue, once one is: a read is due
``hold_s`` after it got its slot, or ``patience`` times that on a connection in good
standing. A call whose slot is taken back ends with RESOURCE_EXHAUSTED (retryable) naming
the setting, and its slot goes, once the call has ended, to the waiting read whose
connection holds the fewest slots (in good standing first among equals, then the
earliest). A read waiting for its first byte (a
half-open call, an idle Train stream) looks the same as one whose message is on its way,
so both hold a slot. A slow sender is also ended by the request timeout or its deadline
(``CallScope.receive``).

Good standing: grpc.aio tells nothing of a message's progress, only of its end, so a
connection is judged by its record: it is in good standing once more of its reads have
completed than have been taken back. A busy honest client on a loaded server then keeps a
large request's slot while it arrives (on a loaded 2-core machine a 1.6 MB request took
over 0.5 s, and such reads were the ones taken back for the waiting half-open calls of
bench/soak.py), while a connection whose reads are mostly taken back (half-open calls,
partial bodies, a new connection) gets ``hold_s``; so do the reads of one client's many
concurrent calls on one connection beyond its share, as each comes due, rather than at
once. A connection that completes small calls to keep its standing holds stalled reads
``patience`` times longer, no more: the slot most overdue is still taken back; and the
record is halved every ``STANDING_WINDOW`` reads, so that standing earned long ago is
lost after some dozens of reads taken back. Records are kept under contention only (naming
a read's connection costs a call into grpc), for the ``STANDING_PEERS`` connections seen
last.
"""

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

STREAM_WINDOW_BYTES = 16 * 1024  # what a stream may send before the handler reads
READ_HOLD_S = 0.5  # a read slot held this long is taken back when another read waits
PATIENCE = 4  # how many times longer a connection in good standing keeps a read slot
# A connection over its share keeps reads granted this recently: their messages may be
# there already, waiting only for the event loop (a busy client's small calls, each a read
# of a few milliseconds, which a reset flood's waiting reads took back, issue 19's soak).
SETTLE_S = 0.05
STANDING_PEERS = 4096  # connections whose record is kept (about 250 bytes each, 1 MiB)
STANDING_WINDOW = 64  # reads a record tells of, about: halved past this
# grpc core's options for the above: a fixed initial window per stream.
FLOW_CONTROL_OPTIONS = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
]


@dataclass(eq=False)
class _Read:
    """One read holding or waiting for a slot."""

    connection: Callable[[], str]  # its connection (the peer), asked only under contention
    take_back: Callable[[Callable[[], None], bool], None]
    since: float = 0.0  # when it got its slot
    taken_back: bool = False
    granted: asyncio.Future | None = None  # set when a waiting read gets its slot
    _peer: str | None = field(default=None, repr=False)

    @property
    def peer(self) -> str:
        if self._peer is None:
            self._peer = self.connection()
        return self._peer


class ArrivalGate:
    """The read slots of one server process (used on its event loop only)."""

    def __init__(
        self,
        max_bytes: int,
        message_bytes: int,
        hold_s: float = READ_HOLD_S,
        patience: float = PATIENCE,
    ) -> None:
        self.total = max_bytes
        self.message_bytes = message_bytes
        self.slots = max(1, max_bytes // message_bytes)  # one read is always allowed
        self.hold_s = hold_s
        self.patience = patience
        self.settle_s = SETTLE_S
        self.taken_back = 0  # slots taken back from reads, since start
        self._holding: list[_Read] = []  # oldest first
        self._waiting: list[_Read] = []  # earliest first
        # connection -> [reads completed, reads taken back], least recently seen first
        self._records: OrderedDict[str, list[int]] = OrderedDict()

    @property
    def used(self) -> int:
        """The bytes that the reads pending now may let arrive, at most."""
        return len(self._holding) * self.message_bytes

    @property
    def waiting(self) -> int:
        """The reads waiting for a slot now."""
        return len(self._waiting)

    async def read(
        self,
        receive: Callable[[], Awaitable],
        take_back: Callable[[Callable[[], None], bool], None],
        connection: Callable[[], str],
    ):
        """``await receive()`` holding a slot, waiting for one first if need be (the caller
        bounds the whole in time). ``connection()`` names the read's connection. If the
        slot is taken back, ``take_back(give_back, over_share)`` is called (``over_share``: at
        once, for its connection's share, rather than overdue): it must end the read's call
        and call ``give_back()`` once the call has ended, which frees the slot."""
        read = _Read(connection, take_back)
        if len(self._holding) < self.slots and not self._waiting:
            self._hold(read)
        else:
            await self._wait(read)
        try:
            message = await receive()
        finally:
            if not read.taken_back:
                self._give_back(read)
        if self._waiting or read._peer is not None:  # under contention: keep its record
            self._note(read.peer, completed=True)
        return message

    def _hold(self, read: _Read) -> None:
        read.since = time.monotonic()
        self._holding.append(read)

    async def _wait(self, read: _Read) -> None:
        read.granted = asyncio.get_running_loop().create_future()
        self._waiting.append(read)
        self._grant()
        try:
            while not read.granted.done():
                await asyncio.wait({read.granted}, timeout=self._take_back_for(read))
        except BaseException:
            if read in self._waiting:
                self._waiting.remove(read)
            elif not read.taken_back:  # granted, but the call ended before reading
                self._give_back(read)
            raise

    def _give_back(self, read: _Read) -> None:
        if read in self._holding:
            self._holding.remove(read)
            self._grant()

    def _note(self, peer: str, completed: bool) -> None:
        """Add a read completed (or taken back) to the connection's record, now the last
        seen; past ``STANDING_WINDOW`` reads the record is halved, so that it tells of the
        connection's recent reads and no standing is banked for long."""
        record = self._records.get(peer)
        if record is None:
            record = self._records[peer] = [0, 0]
            if len(self._records) > STANDING_PEERS:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(peer)
        record[0 if completed else 1] += 1
        if record[0] + record[1] > STANDING_WINDOW:
            record[0] //= 2
            record[1] //= 2

    def _in_good_standing(self, peer: str) -> bool:
        completed, taken_back = self._records.get(peer, (0, 0))
        return completed > taken_back

    def _due(self, read: _Read) -> float:
        """When the read's slot may be taken back for a waiting read (monotonic time)."""
        patience = self.patience if self._in_good_standing(read.peer) else 1
        return read.since + self.hold_s * patience

    def _grant(self) -> None:
        """Free slots to the waiting reads whose connections hold the fewest."""
        while self._waiting and len(self._holding) < self.slots:
            held = Counter(r.peer for r in self._holding)
            fairest = min(
                self._waiting,
                key=lambda w: (held[w.peer], not self._in_good_standing(w.peer)),
            )
            self._waiting.remove(fairest)
            self._hold(fairest)
            fairest.granted.set_result(None)

    def _take_back_for(self, waiting: _Read) -> float:
        """Take a slot back for the ``waiting`` read, unless enough are on their way back;
        the seconds after which to look again (a slot given back wakes it sooner)."""
        returning = sum(r.taken_back for r in self._holding)
        kept = [r for r in self._holding if not r.taken_back]
        if len(self._holding) < self.slots or returning >= len(self._waiting) or not kept:
            return self.hold_s
        held = Counter(r.peer for r in kept)
        peers = len(held.keys() | {r.peer for r in self._waiting})
        suspects = Counter({p: n for p, n in held.items() if not self._in_good_standing(p)})
        hog, most = (suspects.most_common(1) or [("", 0)])[0]
        now = time.monotonic()
        overdue = min(kept, key=self._due)
        due = self._due(overdue) - now
        over_share = most > max(1, self.slots // peers) and most > held[waiting.peer] + 1
        if over_share:
            oldest = next(r for r in kept if r.peer == hog)
            settling = oldest.since + self.settle_s - now
            over_share = settling <= 0
            if not over_share:
                due = min(due, settling)
        if over_share:
            victim = oldest
        elif due <= 0:
            victim = overdue
        else:
            return due
        victim.taken_back = True
        self.taken_back += 1
        self._note(victim.peer, completed=False)
        victim.take_back(lambda: self._give_back(victim), over_share)
        return 0.0  # look again: another read may wait, and another slot be due
