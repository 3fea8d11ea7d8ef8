"""``AsyncClient``: the asyncio flavour of ``Client``, with the same calls awaited."""

from collections.abc import AsyncIterator, Mapping, Sequence

import grpc

from gradserve.client import calls, second_order
from gradserve.client.call_steps import (
    CallSteps,
    Evaluate,
    ListOps,
    Progress,
    Streamed,
    run_async,
)
from gradserve.client.calls import Chunk, Evaluation
from gradserve.client.channel import (
    MAX_MESSAGE_BYTES,
    channel_options,
    serialized_calls,
    target_or_default,
)
from gradserve.client.errors import translated
from gradserve.client.ops import OpInfo
from gradserve.client.value import Value
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


class AsyncClient:
    """Like ``Client`` (same options), on a ``grpc.aio`` channel: ``async with
    AsyncClient(...) as client``, ``await loss.backward(client)``, ``await client.evaluate``,
    ``async for chunk in client.stream(...)``, ``await client.ops()``."""

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str | bytes]] = (),
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        progress: bool | None = None,
    ) -> None:
        options = channel_options(max_message_bytes)
        target = target_or_default(target)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.GradientServiceStub(self._channel)
        self._evaluate, self._evaluate_stream = serialized_calls(self._channel)
        secure = credentials is not None
        self._steps = CallSteps(target, timeout, secure, metadata, max_message_bytes, progress)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def ops(self) -> list[OpInfo]:
        """The server's ops, sorted by name."""
        return await run_async(self._steps.ops(), self._take)

    async def backward(self, loss: Value, *, allow_non_finite: bool = False) -> None:
        """Fill ``.data`` and ``.grad`` of every Value ``loss`` depends on."""
        await run_async(self._steps.backward(loss, allow_non_finite), self._take)

    async def evaluate(
        self,
        outputs: Value | Sequence[Value],
        wrt: Sequence[Value] | None = None,
        seeds: Sequence[float] | None = None,
        *,
        batch: Mapping[Value, Sequence[float]] | None = None,
        allow_non_finite: bool = False,
    ) -> Evaluation:
        """As ``Client.evaluate``."""
        steps = self._steps.evaluate(outputs, wrt, seeds, batch, allow_non_finite)
        return await run_async(steps, self._take)

    async def stream(
        self,
        outputs: Value | Sequence[Value],
        wrt: Sequence[Value] | str | None = None,
        seeds: Sequence[float] | None = None,
        *,
        chunk_size: int = 0,
        progress: bool | None = None,
        allow_non_finite: bool = False,
    ) -> AsyncIterator[Chunk]:
        """As ``Client.stream``: ``async for chunk in client.stream(loss)``."""
        call = self._steps.stream_call(outputs, wrt, seeds, chunk_size, allow_non_finite)
        async for message in self._messages(call, self._steps.shown(progress)):
            yield calls.chunk(call, message)

    # Second order (second_order.py), as on Client.
    async def jvp(self, output, wrt, tangent, *, allow_non_finite=False, timeout=None) -> float:
        """As ``Client.jvp``."""
        made = second_order.jvp(output, wrt, tangent, allow_non_finite)
        return await run_async(self._steps.second_order(made, timeout), self._take)

    async def hvp(self, output, wrt, vector, *, allow_non_finite=False, timeout=None):
        """As ``Client.hvp``."""
        made = second_order.hvp(output, wrt, vector, allow_non_finite)
        return await run_async(self._steps.second_order(made, timeout), self._take)

    async def hessian(self, output, wrt, *, allow_non_finite=False, timeout=None):
        """As ``Client.hessian``."""
        made = second_order.hessian(output, wrt, allow_non_finite)
        return await run_async(self._steps.second_order(made, timeout), self._take)

    async def _take(self, step):
        """As ``Client._take``, awaited; every Evaluate is a unary call."""
        if isinstance(step, Evaluate):
            return await self._evaluate(step.request, **step.options)
        if isinstance(step, ListOps):
            return await self._stub.ListOps(pb.ListOpsRequest(), **step.options)
        assert isinstance(step, Streamed)
        return [message async for message in self._messages(step.call, step.progress)]

    async def _messages(
        self, call: calls.Call, progress: bool | None
    ) -> AsyncIterator[pb.GradientChunk]:
        where = self._steps.where
        with translated(call.subgraph, where):
            responses = self._evaluate_stream(call.whole_graph(), **self._steps.options)
        counted = Progress(progress)
        try:
            with translated(call.subgraph, where):
                async for message in responses:
                    yield counted.count(message)
        finally:
            responses.cancel()
            counted.close()
