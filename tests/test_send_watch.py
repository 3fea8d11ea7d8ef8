"""A call's replies share one send-timeout timer: a Train stream's thousands of small
replies must not cost a timer each, yet a write stuck past the send timeout still ends
the call."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

from gradserve.server.service.admission import MemoryBudget
from gradserve.server.service.calls import CallScope, SendTimedOut, ServerState
from gradserve.server.service.limits import Limits


class Context:
    """A call's grpc context whose writes complete at once, or wait until ``release``."""

    def __init__(self) -> None:
        self.written = 0
        self.release: asyncio.Event | None = None

    async def write(self, message: bytes) -> None:
        if self.release is not None:
            await self.release.wait()
        self.written += 1

    def time_remaining(self):
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def _state(send_timeout_s: float) -> ServerState:
    state = ServerState(
        limits=Limits(),
        budget=MemoryBudget(2**30),
        executor=ThreadPoolExecutor(max_workers=1),
        threads=1,
        send_timeout_s=send_timeout_s,
    )
    state.on_loop()
    return state


def test_many_replies_arm_one_timer():
    async def sends() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        timers = []
        call_at = loop.call_at
        loop.call_at = lambda when, callback, *args, **kwargs: (
            timers.append(callback) or call_at(when, callback, *args, **kwargs)
        )
        context = Context()
        async with CallScope("Train", context, _state(send_timeout_s=600.0)) as call:
            for _ in range(100):
                await call.send(b"reply")
        return len(timers), context.written

    timers, written = asyncio.run(sends())
    assert written == 100
    assert timers == 1  # armed by the first reply; a timer per reply would be 100


def test_a_write_stuck_past_the_send_timeout_abandons_the_call():
    async def stuck() -> tuple[str, bool]:
        context = Context()
        call = CallScope("Train", context, _state(send_timeout_s=0.05))
        await call.send(b"first")  # arms the watch, which then finds no write in progress
        context.release = asyncio.Event()
        writing = asyncio.get_running_loop().create_task(call.send(b"second"))
        while call.note != "send timeout":  # the watch looks again when the write is due
            await asyncio.sleep(0.01)
        context.release.set()
        try:
            await writing
        except SendTimedOut:
            return call.note, True
        return call.note, False

    note, raised = asyncio.run(stuck())
    assert note == "send timeout" and raised
