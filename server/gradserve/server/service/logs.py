"""The per-call log line, made and written off the call's path.

The server logs one line per call. Made in the handler thread, the line cost a log record,
a formatted message and a write system call per call, and whatever reads the log (a
container runtime, a supervisor, the benchmark) woke up for each line: on the 10-node
neuron that was 0.15 ms of a 1.1 ms round trip, and still about 0.06 ms with the writes
batched. Now a call only appends its fields to a queue; a background thread turns them
into ordinary log records every ``interval`` seconds, so they reach every handler (and
pytest's caplog) at most that late, stamped with the time the call ended.
"""

import atexit
import logging
import os
import threading
import time
from collections import deque

DEFAULT_INTERVAL = 0.05  # seconds a call's line may wait
MESSAGE = "%s nodes=%d status=%s %.1f ms"
# Failed calls of one method and status logged per second at most; the others are counted
# and summed up in one line ("... more"), so that a flood of failing calls (13k streams a
# second opened and reset on one connection) does not become a flood of log lines.
FAILURES_PER_SECOND = 100
SUPPRESSED = "%d more %s calls with status=%s in the last %.1f s were not logged one by one"


class CallLog:
    """``add(method, nodes, status, elapsed_ms, ...)`` logs ``MESSAGE`` (at INFO or ``level``) on
    ``logger`` from a background thread. ``flush()`` logs what is pending now; it runs at exit and
    when a server stops. A forked child starts its own thread and leaves what it inherited
    to its parent."""

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL) -> None:
        self._logger = logger
        self.interval = interval
        self._reset()
        os.register_at_fork(after_in_child=self._reset)
        atexit.register(self.flush)

    def _reset(self) -> None:
        self._pending: deque[tuple] = deque()  # append and popleft are thread-safe
        self._failures: dict[tuple[str, str], list] = {}  # (method, status): [start, n, more]
        self._counting = threading.Lock()
        self._wake = threading.Event()
        self._starting = threading.Lock()
        self._flushing = threading.Lock()
        self._writer: threading.Thread | None = None

    def add(
        self,
        method: str,
        nodes: int,
        status: str,
        elapsed_ms: float,
        *,
        rows: int | None = None,
        peer: str | None = None,
        trace_id: str | None = None,
        level: int = logging.INFO,
    ) -> None:
        """Queue a call's line, at ``level``. The optional fields are not in the text line;
        they reach the record's attributes (as ``extra`` does), for ``--log-format json``."""
        if not self._logger.isEnabledFor(level):
            return
        if status != "OK" and self._over_rate(method, status):
            return
        if self._writer is None:
            self._start_writer()
        line = (time.time(), method, nodes, status, elapsed_ms, rows, peer, trace_id, level)
        self._pending.append(line)
        if not self._wake.is_set():
            self._wake.set()

    def _over_rate(self, method: str, status: str) -> bool:
        """Count a failed call; whether its method and status are over the rate this
        second (then only counted, for the summary line)."""
        now = time.monotonic()
        with self._counting:
            window = self._failures.get((method, status))
            if window is None or now - window[0] >= 1.0:
                self._summarise((method, status), window, now)
                self._failures[(method, status)] = [now, 1, 0]
                return False
            window[1] += 1
            if window[1] <= FAILURES_PER_SECOND:
                return False
            window[2] += 1
            return True

    def _summarise(self, key: tuple[str, str], window: list | None, now: float) -> None:
        if window is not None and window[2]:
            args = (window[2], *key, now - window[0])
            self._logger.info(SUPPRESSED, *args)

    def _summarise_old(self) -> None:
        """The summary lines of windows that have ended."""
        now = time.monotonic()
        with self._counting:
            for key, window in list(self._failures.items()):
                if now - window[0] >= 1.0:
                    self._summarise(key, window, now)
                    del self._failures[key]

    def wanted(self, level: int = logging.INFO) -> bool:
        """Whether a call's line at ``level`` would be logged."""
        return self._logger.isEnabledFor(level)

    def _start_writer(self) -> None:
        with self._starting:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write, name="call-log", daemon=True)
                self._writer.start()

    def _write(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        self._summarise_old()
        with self._flushing:
            while self._pending:
                created, method, nodes, status, elapsed_ms, rows, peer, trace_id, level = (
                    self._pending.popleft()
                )
                extra = {
                    "method": method,
                    "nodes": nodes,
                    "status": status,
                    "duration_ms": round(elapsed_ms, 3),
                    "rows": rows,
                    "peer": peer,
                    "trace_id": trace_id,
                }
                record = self._logger.makeRecord(
                    self._logger.name,
                    level,
                    "",
                    0,
                    MESSAGE,
                    (method, nodes, status, elapsed_ms),
                    None,
                    extra=extra,
                )
                _stamp(record, created)
                self._logger.handle(record)


def _stamp(record: logging.LogRecord, created: float) -> None:
    """Give the record the time the call ended rather than the time it was made."""
    record.relativeCreated += (created - record.created) * 1e3
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
