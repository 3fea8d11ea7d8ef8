"""``Client``: the synchronous SDK client."""

from collections.abc import Iterator, Mapping, Sequence

import grpc
import numpy as np

from gradserve.client import calls, replies, second_order
from gradserve.client.call_steps import CallSteps, Evaluate, ListOps, Progress, Streamed, run
from gradserve.client.calls import Chunk, Evaluation
from gradserve.client.channel import (
    MAX_MESSAGE_BYTES,
    connect,
    serialized_calls,
    target_or_default,
)
from gradserve.client.errors import translated
from gradserve.client.ops import OpInfo
from gradserve.client.tracing import trace_metadata
from gradserve.client.train_stream import TrainStreams
from gradserve.client.value import Value
from gradserve.v1 import gradserve_pb2 as pb


class Client:
    """A connection to a gradserve server; use it as a context manager, or ``close()`` it.

    ``target`` is "host:port"; without one, the ``GRADSERVE_TARGET`` environment variable,
    else ``localhost:50051``.
    ``timeout`` (seconds) bounds every call; ``credentials`` makes the channel secure;
    ``metadata`` (key, value) pairs go with every call; ``progress`` None shows a bar for
    large streamed results on a terminal, True or False forces it on or off;
    ``train_stream`` False sends every request as a unary call instead of on the open Train
    stream of its graph structure (``train_stream.py``).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str | bytes]] = (),
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        progress: bool | None = None,
        train_stream: bool = True,
    ) -> None:
        target = target_or_default(target)
        self._channel, self._stub = connect(
            target, max_message_bytes=max_message_bytes, credentials=credentials
        )
        self._evaluate, self._evaluate_stream = serialized_calls(self._channel)
        secure = credentials is not None
        self._steps = CallSteps(target, timeout, secure, metadata, max_message_bytes, progress)
        self._train = TrainStreams(self._channel) if train_stream else None

    def close(self) -> None:
        if self._train is not None:
            self._train.close()
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def ops(self) -> list[OpInfo]:
        """The server's ops, sorted by name, each with its arity, doc and distribution."""
        return run(self._steps.ops(), self._take)

    def backward(self, loss: Value, *, allow_non_finite: bool = False) -> None:
        """Fill ``.data`` and ``.grad`` of every Value ``loss`` depends on (``loss.backward``).

        ``allow_non_finite`` lets NaN and infinities through instead of failing the call."""
        run(self._steps.backward(loss, allow_non_finite), self._take)

    def evaluate(
        self,
        outputs: Value | Sequence[Value],
        wrt: Sequence[Value] | None = None,
        seeds: Sequence[float] | None = None,
        *,
        batch: Mapping[Value, Sequence[float]] | None = None,
        allow_non_finite: bool = False,
    ) -> Evaluation:
        """Values of ``outputs``, and values and gradients of ``wrt`` (default: the graph's
        leaves), without touching the Value objects. ``seeds`` weight the outputs' gradients
        (default 1.0 each). ``batch`` maps leaf Values to sequences of B values: the graph is
        then evaluated at all B rows in one call (the other leaves keep their ``.data``), and
        the results gain a leading axis of length B. ``allow_non_finite`` lets NaN and
        infinities through instead of failing the call."""
        steps = self._steps.evaluate(outputs, wrt, seeds, batch, allow_non_finite)
        return run(steps, self._take)

    def stream(
        self,
        outputs: Value | Sequence[Value],
        wrt: Sequence[Value] | str | None = None,
        seeds: Sequence[float] | None = None,
        *,
        chunk_size: int = 0,
        progress: bool | None = None,
        allow_non_finite: bool = False,
    ) -> Iterator[Chunk]:
        """Like ``evaluate``, but yields the results of ``wrt`` (default: the leaves; "all"
        for every node) chunk by chunk as they arrive, with a progress bar on a terminal."""
        call = self._steps.stream_call(outputs, wrt, seeds, chunk_size, allow_non_finite)
        for message in self._messages(call, self._steps.shown(progress)):
            yield calls.chunk(call, message)

    # Second order (second_order.py). wrt: leaf Values; their current .data is the point.
    def jvp(self, output, wrt, tangent, *, allow_non_finite=False, timeout=None) -> float:
        """The directional derivative of ``output`` along ``tangent`` (one number per Value
        of ``wrt``): a Jacobian-vector product."""
        made = second_order.jvp(output, wrt, tangent, allow_non_finite)
        return run(self._steps.second_order(made, timeout), self._take)

    def hvp(self, output, wrt, vector, *, allow_non_finite=False, timeout=None) -> np.ndarray:
        """H @ vector, shape (len(wrt),), H the Hessian of ``output`` with respect to
        ``wrt`` (other leaves held constant)."""
        made = second_order.hvp(output, wrt, vector, allow_non_finite)
        return run(self._steps.second_order(made, timeout), self._take)

    def hessian(self, output, wrt, *, allow_non_finite=False, timeout=None) -> np.ndarray:
        """The Hessian of ``output`` with respect to ``wrt``, shape (n, n), in one call."""
        made = second_order.hessian(output, wrt, allow_non_finite)
        return run(self._steps.second_order(made, timeout), self._take)

    def _take(self, step):
        """One step of a call (``call_steps``) sent, its reply."""
        if isinstance(step, Evaluate):
            if step.train_stream:
                return self._send(step.request)
            return self._evaluate(step.request, **step.options)
        if isinstance(step, ListOps):
            return self._stub.ListOps(pb.ListOpsRequest(), **step.options)
        assert isinstance(step, Streamed)
        return list(self._messages(step.call, step.progress))

    def _send(self, request: bytes) -> replies.Answer:
        """Evaluate's reply: a message on the Train stream when it is free, else a call
        (also inside a traced span: a call carries its own trace context, see ``tracing``)."""
        options = self._steps.options
        if self._train is not None and not trace_metadata():
            response = self._train.evaluate(request, options["timeout"], options["metadata"])
            if response is not None:
                return response
        return self._evaluate(request, **options)

    def _messages(self, call: calls.Call, progress: bool | None) -> Iterator[pb.GradientChunk]:
        """EvaluateStream's chunks, counted on a progress bar; cancelled if abandoned."""
        where = self._steps.where
        with translated(call.subgraph, where):
            responses = self._evaluate_stream(call.whole_graph(), **self._steps.options)
        counted = Progress(progress)
        try:
            with translated(call.subgraph, where):
                for message in responses:
                    yield counted.count(message)
        finally:
            responses.cancel()
            counted.close()
