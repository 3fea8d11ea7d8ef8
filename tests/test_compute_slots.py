"""The compute slots: a freed slot goes to the waiting call that has used the least CPU
(aged by its wait), a connection holds all but one slot while others wait, none is lost."""

import asyncio

from gradserve.server.service.compute_slots import AGING, LEAD, ComputeSlots


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
    arriving later, having used less CPU, gets the first slot freed, before either."""

    async def scenario():
        slots = ComputeSlots(3)
        slots.clock = clock = Clock()
        await slots.acquire("wide", 1.5)
        await slots.acquire("rows", 3.0)
        await slots.acquire("chunks", 2.0)
        next_steps = [
            asyncio.create_task(slots.acquire("wide", 1.5)),
            asyncio.create_task(slots.acquire("rows", 3.0)),
        ]
        await _settle()
        clock.now += 1  # the short call arrives a second later
        short = asyncio.create_task(slots.acquire("client", 0.05))
        await _settle()
        assert slots.first_key < float("inf")  # the steps computing would give way to it
        # A step computing would give way to it once it has used LEAD more CPU.
        assert slots.passes(0.05 + LEAD + 0.01) and not slots.passes(0.05 + LEAD - 0.01)
        slots.release("chunks")
        await _settle()
        assert short.done() and not any(task.done() for task in next_steps)
        slots.release("client")  # then the least CPU: the wide HVP's step
        await _settle()
        assert [task.done() for task in next_steps] == [True, False]
        next_steps[1].cancel()
        await asyncio.gather(*next_steps, return_exceptions=True)

    asyncio.run(scenario())


def test_waiting_ages_a_long_call_until_it_comes_before_fresh_ones():
    """A call that has used a second of CPU comes after fresh calls, until it has waited
    1 / AGING seconds longer than they have: it is not starved on a busy server."""

    async def scenario():
        slots = ComputeSlots(1)
        slots.clock = clock = Clock()
        await slots.acquire("busy")
        long_call = asyncio.create_task(slots.acquire("long", 1.0))
        await _settle()
        clock.now += 1.0 / AGING - 1  # not quite long enough
        fresh = asyncio.create_task(slots.acquire("fresh", 0.0))
        await _settle()
        slots.release("busy")
        await _settle()
        assert fresh.done() and not long_call.done()
        clock.now += 2  # now the long call has waited 1 / AGING + 1 s more than this one
        later = asyncio.create_task(slots.acquire("later", 0.0))
        await _settle()
        slots.release("fresh")
        await _settle()
        assert long_call.done() and not later.done()
        later.cancel()
        await asyncio.gather(later, return_exceptions=True)
        slots.release("long")
        assert slots.free == 1 and slots.by_connection == {}

    asyncio.run(scenario())


def test_a_connection_of_short_calls_cannot_hold_every_slot_while_a_long_call_waits():
    """The other way round: a connection of many calls that have used no CPU holds at most
    count - 1 slots while a call of another connection waits, whatever CPU it used."""

    async def scenario():
        slots = ComputeSlots(3)
        for _ in range(2):
            await slots.acquire("many")
        long_call = asyncio.create_task(slots.acquire("long", 10.0))
        await _settle()  # the third slot is free: a call of its own takes it at once
        assert long_call.done()
        slots.release("long")
        await slots.acquire("many")
        assert slots.by_connection == {"many": 3}  # alone, a connection uses every slot
        long_call = asyncio.create_task(slots.acquire("long", 10.0))
        more = [asyncio.create_task(slots.acquire("many", 0.0)) for _ in range(3)]
        await _settle()
        slots.release("many")
        await _settle()
        assert long_call.done() and not any(task.done() for task in more)
        assert slots.by_connection == {"many": 2, "long": 1}
        slots.release("long")  # no other connection waits: its calls use the slot
        await _settle()
        assert [task.done() for task in more] == [True, False, False]
        for task in more[1:]:
            task.cancel()
        await asyncio.gather(*more, return_exceptions=True)

    asyncio.run(scenario())
