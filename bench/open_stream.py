"""One long-lived bidirectional stream, used message by message as the SDK uses Train: send
one message, wait for its answer, send the next."""

import queue

import grpc


class OpenStream:
    """A stream-stream method's call on ``channel`` at ``path``, bytes in and out."""

    def __init__(self, channel: grpc.Channel, path: str) -> None:
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._answers = channel.stream_stream(path)(iter(self._outbox.get, None))

    def call(self, message: bytes) -> bytes:
        self._outbox.put(message)
        return next(self._answers)

    def close(self) -> None:
        self._outbox.put(None)
        self._answers.cancel()
