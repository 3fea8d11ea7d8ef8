"""The per-call log line: written from a background thread, a little late, with the call's time."""

import logging
import os
import time

from hardening import wait_until

from gradserve.server.service.logs import CallLog


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _logger(name: str, level: int = logging.INFO) -> tuple[logging.Logger, Kept]:
    kept = Kept()
    logger = logging.getLogger(f"test_logs.{name}")
    logger.handlers[:] = [kept]
    logger.setLevel(level)
    logger.propagate = False
    return logger, kept


def test_lines_arrive_after_the_interval_stamped_with_the_calls_time():
    logger, kept = _logger("batched")
    calls = CallLog(logger, interval=0.2)
    added = time.time()
    calls.add("Evaluate", 10, "OK", 0.25)
    first_added = time.time()
    calls.add("ListOps", 0, "CANCELLED", 1.0)
    assert kept.records == []  # not made by the calling thread
    assert wait_until(lambda: len(kept.records) == 2, timeout=5)
    assert time.time() - added >= 0.2
    assert [r.getMessage() for r in kept.records] == [
        "Evaluate nodes=10 status=OK 0.2 ms",
        "ListOps nodes=0 status=CANCELLED 1.0 ms",
    ]
    first = kept.records[0]
    assert first.levelno == logging.INFO and first.name == logger.name
    # Stamped with the time of its add, not of the record made 0.2 s later (a condition,
    # not a bound in seconds: a bound of 0.1 s failed under load).
    assert added <= first.created <= first_added
    assert first.msecs == int(first.created % 1 * 1000)


def test_flush_logs_what_is_pending_at_once():
    logger, kept = _logger("flush")
    calls = CallLog(logger, interval=60)
    calls.add("Evaluate", 3, "INVALID_ARGUMENT", 0.5)
    calls.flush()
    assert [r.getMessage() for r in kept.records] == [
        "Evaluate nodes=3 status=INVALID_ARGUMENT 0.5 ms"
    ]


def test_nothing_is_kept_when_info_is_off():
    logger, kept = _logger("quiet", level=logging.WARNING)
    calls = CallLog(logger, interval=60)
    calls.add("Evaluate", 10, "OK", 0.25)
    logger.setLevel(logging.INFO)
    calls.flush()
    assert kept.records == []


def test_a_forked_child_leaves_its_parents_pending_lines_to_the_parent(tmp_path):
    logger, kept = _logger("fork")
    path = tmp_path / "child"
    calls = CallLog(logger, interval=60)
    calls.add("Evaluate", 1, "OK", 0.1)
    child = os.fork()
    if child == 0:
        calls.add("Evaluate", 2, "OK", 0.1)
        calls.flush()
        path.write_text("\n".join(r.getMessage() for r in kept.records))
        os._exit(0)
    os.waitpid(child, 0)
    calls.flush()
    assert path.read_text() == "Evaluate nodes=2 status=OK 0.1 ms"
    assert [r.getMessage() for r in kept.records] == ["Evaluate nodes=1 status=OK 0.1 ms"]
