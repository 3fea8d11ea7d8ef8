"""``Client``: the synchronous SDK client."""

from collections.abc import Iterator, Mapping, Sequence

import grpc
import numpy as np

from gradserve.client import calls, ops, second_order
from gradserve.client.calls import Chunk, Evaluation
from gradserve.client.channel import (
    MAX_MESSAGE_BYTES,
    connect,
    serialized_calls,
    target_or_default,
)
from gradserve.client.errors import Where, translated
from gradserve.client.progress import progress_bar
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
        self._options = {"timeout": timeout, "metadata": tuple(metadata)}
        self._where = Where(target, credentials is not None, timeout)
        self._progress = progress
        self._max_message_bytes = max_message_bytes
        self._plans = calls.PlanDigests()
        self._train = TrainStreams(self._channel) if train_stream else None

    def close(self) -> None:
        if self._train is not None:
            self._train.close()
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def ops(self) -> list[ops.OpInfo]:
        """The server's ops, sorted by name, each with its arity, doc and distribution."""
        with translated(where=self._where):
            return ops.from_reply(self._stub.ListOps(pb.ListOpsRequest(), **self._options))

    def backward(self, loss: Value, *, allow_non_finite: bool = False) -> None:
        """Fill ``.data`` and ``.grad`` of every Value ``loss`` depends on (``loss.backward``).

        ``allow_non_finite`` lets NaN and infinities through instead of failing the call."""
        call = calls.backward_call(
            loss,
            allow_non_finite=allow_non_finite,
            plans=self._plans,
            max_message_bytes=self._max_message_bytes,
        )
        if not calls.streams(len(call.subgraph), self._max_message_bytes):
            calls.fill(call.subgraph, [self._unary(call)])
            return
        calls.fill(call.subgraph, list(self._messages(call, self._progress)))

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
        call = calls.evaluate_call(
            outputs,
            wrt,
            seeds,
            with_outputs=True,
            batch=batch,
            allow_non_finite=allow_non_finite,
            plans=self._plans,
        )
        return calls.evaluation(call, self._unary(call))

    def _unary(self, call: calls.Call) -> pb.EvaluateResponse:
        """Evaluate's reply; with the whole graph again if the server lost the plan named."""
        with translated(call.subgraph, self._where):
            try:
                response = self._send(call.request)
            except grpc.RpcError as error:
                if not self._plans.forget(call, error):
                    raise
                response = self._send(call.full_request())
        self._plans.learn(call, response)
        return response

    def _send(self, request: bytes) -> pb.EvaluateResponse:
        """Evaluate's reply: a message on the Train stream when it is free, else a call
        (also inside a traced span: a call carries its own trace context, see ``tracing``)."""
        if self._train is not None and not trace_metadata():
            timeout, metadata = self._options["timeout"], self._options["metadata"]
            response = self._train.evaluate(request, timeout, metadata)
            if response is not None:
                return response
        return self._evaluate(request, **self._options)

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
        call = calls.evaluate_call(
            outputs, wrt, seeds, chunk_size=chunk_size, allow_non_finite=allow_non_finite
        )
        show = self._progress if progress is None else progress
        for message in self._messages(call, show):
            yield calls.chunk(call, message)

    # Second order (second_order.py). wrt: leaf Values; their current .data is the point.
    def jvp(self, output, wrt, tangent, *, allow_non_finite=False, timeout=None) -> float:
        """The directional derivative of ``output`` along ``tangent`` (one number per Value
        of ``wrt``): a Jacobian-vector product."""
        made = second_order.jvp(output, wrt, tangent, allow_non_finite)
        return self._second_order(*made, timeout)

    def hvp(self, output, wrt, vector, *, allow_non_finite=False, timeout=None) -> np.ndarray:
        """H @ vector, shape (len(wrt),), H the Hessian of ``output`` with respect to
        ``wrt`` (other leaves held constant)."""
        made = second_order.hvp(output, wrt, vector, allow_non_finite)
        return self._second_order(*made, timeout)

    def hessian(self, output, wrt, *, allow_non_finite=False, timeout=None) -> np.ndarray:
        """The Hessian of ``output`` with respect to ``wrt``, shape (n, n), in one call."""
        return self._second_order(*second_order.hessian(output, wrt, allow_non_finite), timeout)

    def _second_order(self, call: calls.Call, read, timeout: float | None):
        where = second_order.where(self._where, timeout)
        with translated(call.subgraph, where):
            response = self._evaluate(call.request, **second_order.options(self._options, timeout))
        return read(response)

    def _messages(self, call: calls.Call, progress: bool | None) -> Iterator[pb.GradientChunk]:
        """EvaluateStream's chunks, counted on a progress bar; cancelled if abandoned."""
        with translated(call.subgraph, self._where):
            responses = self._evaluate_stream(call.whole_graph(), **self._options)
        bar = None
        try:
            with translated(call.subgraph, self._where):
                for message in responses:
                    if bar is None:
                        bar = progress_bar(message.total_nodes, progress)
                    bar.update(len(message.node_ids))
                    yield message
        finally:
            responses.cancel()
            if bar is not None:
                bar.close()
