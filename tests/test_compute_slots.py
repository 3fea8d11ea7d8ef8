"""The compute slots: a freed slot goes to the connection holding the fewest, none is lost."""

import asyncio

from gradserve.server.service.compute_slots import ComputeSlots


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


def test_a_freed_slot_goes_to_the_connection_holding_fewest_not_the_oldest_waiter():
    """Issue 19's soak: one connection queued long evaluations ahead of another client's
    call; with a first-come semaphore that call waited for the whole queue."""

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
