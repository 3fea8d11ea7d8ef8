"""The SDK's calls without their I/O: what ``Client`` and ``AsyncClient`` share.

A call is a generator of steps. It yields what is to be sent (``Evaluate``, ``ListOps``,
``Streamed``); the client driving it sends that, as a blocking call (``run``) or an awaited
one (``run_async``), and sends the reply back in, or throws the call's error in. Which request
to build, the retry with the whole graph for a server that lost a plan, the errors' wording,
filling Values and reading results are thus written once, and each client is only the loop
that drives its calls (the "sans-I/O" way of h11 and hyper-h2).
"""

from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass

import grpc

from gradserve.client import calls, ops, second_order
from gradserve.client.calls import Call
from gradserve.client.errors import Where, translated
from gradserve.client.progress import progress_bar
from gradserve.v1 import gradserve_pb2 as pb


@dataclass(frozen=True)
class Evaluate:
    """Send the serialized EvaluateRequest ``request`` with ``options`` (timeout and
    metadata); reply: the EvaluateResponse. ``train_stream``: it may go as a message on the
    client's open Train stream."""

    request: bytes
    options: dict
    train_stream: bool = True


@dataclass(frozen=True)
class ListOps:
    """Ask for the server's ops; reply: the ListOpsResponse."""

    options: dict


@dataclass(frozen=True)
class Streamed:
    """Send ``call`` as an EvaluateStream call; reply: the list of its GradientChunks."""

    call: Call
    progress: bool | None


Steps = Generator[Evaluate | ListOps | Streamed, object, object]


class CallSteps:
    """One client's settings and the plan digests it learnt, and its calls as steps."""

    def __init__(
        self,
        target: str,
        timeout: float | None,
        secure: bool,
        metadata: Sequence[tuple[str, str | bytes]],
        max_message_bytes: int,
        progress: bool | None,
    ) -> None:
        self.options = {"timeout": timeout, "metadata": tuple(metadata)}
        self.where = Where(target, secure, timeout)
        self.progress = progress
        self.max_message_bytes = max_message_bytes
        self.plans = calls.PlanDigests()

    def ops(self) -> Steps:
        with translated(where=self.where):
            reply = yield ListOps(self.options)
        return ops.from_reply(reply)

    def backward(self, loss, allow_non_finite: bool) -> Steps:
        call = calls.backward_call(
            loss,
            allow_non_finite=allow_non_finite,
            plans=self.plans,
            max_message_bytes=self.max_message_bytes,
        )
        if calls.streams(len(call.subgraph), self.max_message_bytes):
            messages = yield Streamed(call, self.progress)
        else:
            messages = [(yield from self._unary(call))]
        calls.fill(call.subgraph, messages)

    def evaluate(self, outputs, wrt, seeds, batch, allow_non_finite: bool) -> Steps:
        call = calls.evaluate_call(
            outputs,
            wrt,
            seeds,
            with_outputs=True,
            batch=batch,
            allow_non_finite=allow_non_finite,
            plans=self.plans,
        )
        return calls.evaluation(call, (yield from self._unary(call)))

    def _unary(self, call: Call) -> Steps:
        """Evaluate's reply; with the whole graph again if the server lost the plan named."""
        with translated(call.subgraph, self.where):
            try:
                response = yield Evaluate(call.request, self.options)
            except grpc.RpcError as error:
                if not self.plans.forget(call, error):
                    raise
                response = yield Evaluate(call.full_request(), self.options)
        self.plans.learn(call, response)
        return response

    def second_order(self, made: tuple[Call, Callable], timeout: float | None) -> Steps:
        """A jvp, hvp or hessian call (``second_order.py`` made it): always a call of its
        own, with its own ``timeout`` when given."""
        call, read = made
        options = second_order.options(self.options, timeout)
        with translated(call.subgraph, second_order.where(self.where, timeout)):
            response = yield Evaluate(call.request, options, train_stream=False)
        return read(response)

    def stream_call(self, outputs, wrt, seeds, chunk_size: int, allow_non_finite: bool) -> Call:
        return calls.evaluate_call(
            outputs, wrt, seeds, chunk_size=chunk_size, allow_non_finite=allow_non_finite
        )

    def shown(self, progress: bool | None) -> bool | None:
        """Whether a stream shows a progress bar: its own wish, else the client's."""
        return self.progress if progress is None else progress


class Progress:
    """The progress bar of one EvaluateStream call, made at its first chunk."""

    def __init__(self, show: bool | None) -> None:
        self._show = show
        self._bar = None

    def count(self, message: pb.GradientChunk) -> pb.GradientChunk:
        if self._bar is None:
            self._bar = progress_bar(message.total_nodes, self._show)
        self._bar.update(len(message.node_ids))
        return message

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run(steps: Steps, send: Callable[[object], object]):
    """Drive a call's ``steps``, each sent with ``send``; the call's result."""
    try:
        step = next(steps)
        while True:
            try:
                reply = send(step)
            except Exception as error:  # the call's own handling (retry, wording) sees it
                step = steps.throw(error)
            else:
                step = steps.send(reply)
    except StopIteration as done:
        return done.value


async def run_async(steps: Steps, send: Callable[[object], Awaitable[object]]):
    """``run``, each step's sending awaited."""
    try:
        step = next(steps)
        while True:
            try:
                reply = await send(step)
            except Exception as error:
                step = steps.throw(error)
            else:
                step = steps.send(reply)
    except StopIteration as done:
        return done.value
