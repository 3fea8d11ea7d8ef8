"""The compute slots: a freed slot goes to the waiting call that came first, unless it has
computed long, a connection holds all but one slot while others wait, none is lost."""

import asyncio

from gradserve.server.service.compute_slots import LEAD, LONG, RATE, ComputeSlots


async def _settle() -> None:
    """Let every task that can run, run."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_connection_alone_uses_every_slot():
    async def scenario():
        slots = ComputeSlots(3)
        for _ in range(3):
            await asyncio.wait_for(slots.acquire("a"), 1)
        assert slots.free == 0 and slots.by_connection == {"a": 3}
        waiting = asyncio.create_task(slots.acquire("a"))
        await _settle()
        assert not waiting.done()
        slots.release("a")
        await asyncio.wait_for(waiting, 1)
        assert slots.by_connection == {"a": 3}

    asyncio.run(scenario())


def test_a_connection_holding_all_but_one_slot_gets_no_more_while_another_waits():
    """Issue 19's soak: one connection queued long evaluations ahead of another client's
    call; with a first-come semaphore that call waited for the whole queue. The abuser's
    waiters came first and used no more CPU: the share alone lets the client in."""

    async def scenario():
        slots = ComputeSlots(2)
        await slots.acquire("abuser")
        await slots.acquire("abuser")
        queued = [asyncio.create_task(slots.acquire("abuser")) for _ in range(3)]
        await _settle()
        other = asyncio.create_task(slots.acquire("client"))
        await _settle()
        slots.release("abuser")
        await _settle()
        assert other.done() and not any(task.done() for task in queued)
        assert slots.by_connection == {"abuser": 1, "client": 1}
        slots.release("client")  # the abuser's oldest waiter next, the others still wait
        await _settle()
        assert [task.done() for task in queued] == [True, False, False]
        for task in queued[1:]:
            task.cancel()
        await asyncio.gather(*queued[1:], return_exceptions=True)

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_no_slot_held():
    async def scenario():
        slots = ComputeSlots(1)
        await slots.acquire("a")
        before = asyncio.create_task(slots.acquire("b"))  # cancelled while it waits
        after = asyncio.create_task(slots.acquire("c"))  # given the slot, cancelled unrun
        await _settle()
        before.cancel()
        await asyncio.gather(before, return_exceptions=True)
        slots.release("a")
        after.cancel()
        await asyncio.gather(after, return_exceptions=True)
        assert slots.free == 1 and slots.by_connection == {}
        await asyncio.wait_for(slots.acquire("d"), 1)

    asyncio.run(scenario())


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_call_that_has_used_less_cpu_passes_the_next_steps_of_long_calls():
    """Long calls of three connections hold every slot, two queue their next steps; a call
    arriving a second later, having used a little CPU, gets the first slot freed, before
    either; then the long calls go by the CPU they used."""

    async def scenario():
        slots = ComputeSlots(3)
        slots.clock = clock = Clock()
        began = clock.now
        for connection in ("wide", "rows", "chunks"):
            await slots.acquire(connection)
        next_steps = [
            asyncio.create_task(slots.acquire("wide", began, 1.5)),
            asyncio.create_task(slots.acquire("rows", began, 3.0)),
        ]
        await _settle()
        clock.now += 1
        short = asyncio.create_task(slots.acquire("client", clock.now, 0.05))
        await _settle()
        # A step of a call that began with the long ones would give its slot up to it once
        # its key (it computed long) is LEAD past the short call's.
        edge = LONG + (clock.now - began + LEAD) * RATE
        assert slots.passes(began, edge + 0.01) and not slots.passes(began, edge - 0.01)
        slots.release("chunks")
        await _settle()
        assert short.done() and not any(task.done() for task in next_steps)
        slots.release("client")  # then the least CPU: the wide HVP's step
        await _settle()
        assert [task.done() for task in next_steps] == [True, False]
        next_steps[1].cancel()
        await asyncio.gather(*next_steps, return_exceptions=True)

    asyncio.run(scenario())


def test_a_call_that_computed_long_gets_its_turn_once_later_calls_catch_up():
    """A call that has used a second of CPU (LONG and then some) comes after calls that
    began less than (1 - LONG) / RATE seconds after it, and before those that began
    later: it is not starved on a busy server, and it gets RATE of a core over its life."""

    async def scenario():
        slots = ComputeSlots(1)
        slots.clock = clock = Clock()
        began = clock.now
        await slots.acquire("busy")
        long_call = asyncio.create_task(slots.acquire("long", began, 1.0))
        await _settle()
        clock.now = began + (1.0 - LONG) / RATE - 0.5
        sooner = asyncio.create_task(slots.acquire("sooner"))
        await _settle()
        slots.release("busy")
        await _settle()
        assert sooner.done() and not long_call.done()
        clock.now = began + (1.0 - LONG) / RATE + 0.5
        later = asyncio.create_task(slots.acquire("later"))
        await _settle()
        slots.release("sooner")
        await _settle()
        assert long_call.done() and not later.done()
        later.cancel()
        await asyncio.gather(later, return_exceptions=True)
        slots.release("long")
        assert slots.free == 1 and slots.by_connection == {}

    asyncio.run(scenario())


def test_a_connection_keeps_the_last_slot_from_its_calls_for_a_short_call_not_a_long_one():
    """While another connection's call waits, a connection holding all slots but one gets
    the last only if that call has computed long (issue 19's wide HVP took a thread
    whenever it asked); a short call of another connection gets it before the
    connection's own calls that came earlier."""

    async def scenario():
        slots = ComputeSlots(3)
        slots.clock = clock = Clock()
        for _ in range(3):
            await slots.acquire("many")
        long_call = asyncio.create_task(slots.acquire("long", clock.now, used=10.0))
        await _settle()
        clock.now += 1
        more = [asyncio.create_task(slots.acquire("many")) for _ in range(2)]
        await _settle()
        slots.release("many")  # the first by key: the long call has computed 40 s worth
        await _settle()
        assert more[0].done() and not (long_call.done() or more[1].done())
        clock.now += 1
        short = asyncio.create_task(slots.acquire("other", used=0.01))
        await _settle()
        slots.release("many")  # "many" holds its share: the short call passes more[1]
        await _settle()
        assert short.done() and not (long_call.done() or more[1].done())
        assert slots.by_connection == {"many": 2, "other": 1}
        for task in (long_call, more[1]):
            task.cancel()
        await asyncio.gather(long_call, more[1], return_exceptions=True)
        assert slots.by_connection == {"many": 2, "other": 1} and slots.free == 0

    asyncio.run(scenario())
