"""Truthful, bounded logs (issue 19, findings 6 and 7): a flood of failing calls (rapid
reset opens and resets thousands of streams a second) is logged at a bounded rate, with a
line that counts the rest; successful calls are never held back."""

from test_logs import _logger

from gradserve.server.service import logs
from gradserve.server.service.logs import CallLog


def test_a_flood_of_one_failure_is_logged_at_a_bounded_rate_and_counted(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    logger, kept = _logger("flood")
    calls = CallLog(logger, interval=60)  # flushed by hand below
    flood = 3 * logs.FAILURES_PER_SECOND
    for _ in range(flood):
        calls.add("Evaluate", 0, "CANCELLED", 0.1)
    for _ in range(flood):
        calls.add("Evaluate", 10, "OK", 0.1)  # never held back
    calls.flush()
    messages = [record.getMessage() for record in kept.records]
    assert messages.count("Evaluate nodes=0 status=CANCELLED 0.1 ms") == logs.FAILURES_PER_SECOND
    assert messages.count("Evaluate nodes=10 status=OK 0.1 ms") == flood
    assert not any("more" in message for message in messages)  # the second is not over yet
    clock[0] += 1.5
    calls.flush()
    summary = [message for message in kept.records[-1:] if "more" in message.getMessage()]
    assert summary, [r.getMessage() for r in kept.records[-3:]]
    text = summary[0].getMessage()
    assert text.startswith(f"{flood - logs.FAILURES_PER_SECOND} more Evaluate calls"), text
    assert "status=CANCELLED" in text
    calls.add("Evaluate", 0, "CANCELLED", 0.1)  # a new second: logged again
    calls.flush()
    assert kept.records[-1].getMessage() == "Evaluate nodes=0 status=CANCELLED 0.1 ms"
