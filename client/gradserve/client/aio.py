"""``AsyncClient``: the asyncio flavour of ``Client``, with the same calls awaited."""

from collections.abc import AsyncIterator, Mapping, Sequence

import grpc

from gradserve.client import calls, ops, second_order
from gradserve.client.calls import Chunk, Evaluation
from gradserve.client.channel import (
    MAX_MESSAGE_BYTES,
    channel_options,
    serialized_calls,
    target_or_default,
)
from gradserve.client.errors import Where, translated
from gradserve.client.progress import progress_bar
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
        self._options = {"timeout": timeout, "metadata": tuple(metadata)}
        self._where = Where(target, credentials is not None, timeout)
        self._progress = progress
        self._max_message_bytes = max_message_bytes
        self._plans = calls.PlanDigests()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def ops(self) -> list[ops.OpInfo]:
        """The server's ops, sorted by name."""
        with translated(where=self._where):
            return ops.from_reply(await self._stub.ListOps(pb.ListOpsRequest(), **self._options))

    async def backward(self, loss: Value, *, allow_non_finite: bool = False) -> None:
        """Fill ``.data`` and ``.grad`` of every Value ``loss`` depends on."""
        call = calls.backward_call(
            loss,
            allow_non_finite=allow_non_finite,
            plans=self._plans,
            max_message_bytes=self._max_message_bytes,
        )
        if not calls.streams(len(call.subgraph), self._max_message_bytes):
            calls.fill(call.subgraph, [await self._unary(call)])
            return
        messages = [message async for message in self._messages(call, self._progress)]
        calls.fill(call.subgraph, messages)

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
        call = calls.evaluate_call(
            outputs,
            wrt,
            seeds,
            with_outputs=True,
            batch=batch,
            allow_non_finite=allow_non_finite,
            plans=self._plans,
        )
        return calls.evaluation(call, await self._unary(call))

    async def _unary(self, call: calls.Call) -> pb.EvaluateResponse:
        """As ``Client._unary``."""
        with translated(call.subgraph, self._where):
            try:
                response = await self._evaluate(call.request, **self._options)
            except grpc.RpcError as error:
                if not self._plans.forget(call, error):
                    raise
                response = await self._evaluate(call.full_request(), **self._options)
        self._plans.learn(call, response)
        return response

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
        call = calls.evaluate_call(
            outputs, wrt, seeds, chunk_size=chunk_size, allow_non_finite=allow_non_finite
        )
        show = self._progress if progress is None else progress
        async for message in self._messages(call, show):
            yield calls.chunk(call, message)

    # Second order (second_order.py), as on Client.
    async def jvp(self, output, wrt, tangent, *, allow_non_finite=False, timeout=None) -> float:
        """As ``Client.jvp``."""
        made = second_order.jvp(output, wrt, tangent, allow_non_finite)
        return await self._second_order(*made, timeout)

    async def hvp(self, output, wrt, vector, *, allow_non_finite=False, timeout=None):
        """As ``Client.hvp``."""
        made = second_order.hvp(output, wrt, vector, allow_non_finite)
        return await self._second_order(*made, timeout)

    async def hessian(self, output, wrt, *, allow_non_finite=False, timeout=None):
        """As ``Client.hessian``."""
        made = second_order.hessian(output, wrt, allow_non_finite)
        return await self._second_order(*made, timeout)

    async def _second_order(self, call: calls.Call, read, timeout: float | None):
        options = second_order.options(self._options, timeout)
        with translated(call.subgraph, second_order.where(self._where, timeout)):
            response = await self._evaluate(call.request, **options)
        return read(response)

    async def _messages(
        self, call: calls.Call, progress: bool | None
    ) -> AsyncIterator[pb.GradientChunk]:
        with translated(call.subgraph, self._where):
            responses = self._evaluate_stream(call.whole_graph(), **self._options)
        bar = None
        try:
            with translated(call.subgraph, self._where):
                async for message in responses:
                    if bar is None:
                        bar = progress_bar(message.total_nodes, progress)
                    bar.update(len(message.node_ids))
                    yield message
        finally:
            responses.cancel()
            if bar is not None:
                bar.close()
