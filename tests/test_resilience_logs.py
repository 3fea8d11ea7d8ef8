"""Truthful, bounded logs (issue 19, findings 6 and 7): a flood of failing calls (rapid
reset opens and resets thousands of streams a second) is logged at a bounded rate, with a
line that counts the rest; successful calls are never held back; a call's line says the
status its client got."""

import logging
import time

import grpc
import pytest
from graphs import GraphBuilder
from hardening import wait_until
from resilience import EVALUATE, channel_to, repeated_nodes, stub_on
from test_logs import _logger

from bench.h2_client import H2GrpcClient
from gradserve.server.service import logs
from gradserve.server.service.app import running_server
from gradserve.server.service.calls import CANCELLED_OR_REFUSED, REFUSED_OR_RESET, call_log
from gradserve.server.service.logs import CallLog
from gradserve.v1 import gradserve_pb2 as pb

pytestmark = pytest.mark.usefixtures("fresh_call_log_rates")


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
    more = flood - logs.FAILURES_PER_SECOND
    assert text == (  # the seconds since the window began
        f"{more} more Evaluate calls with status=CANCELLED in the last 1.5 s were not logged "
        "one by one"
    )
    calls.add("Evaluate", 0, "CANCELLED", 0.1)  # a new second: logged again
    calls.flush()
    assert kept.records[-1].getMessage() == "Evaluate nodes=0 status=CANCELLED 0.1 ms"


def test_a_client_gone_mid_reply_is_logged_cancelled_without_a_traceback(registry, caplog):
    """Finding 6: streams whose client cancels after the first chunk, while the server is
    writing the next ones: each call's line says CANCELLED, as the client saw it, and the
    server logs no error and no traceback."""
    request = repeated_nodes(400_000)
    request.chunk_size = 1_000
    with (
        caplog.at_level(logging.INFO),
        running_server(registry) as server,
        channel_to(server.port) as channel,
    ):
        for _ in range(5):
            stream = stub_on(channel).EvaluateStream(request, timeout=60)
            next(stream)
            stream.cancel()
        assert wait_until(lambda: len(_lines(caplog, "EvaluateStream")) == 5, timeout=30)
    assert {_status(line) for line in _lines(caplog, "EvaluateStream")} == {"CANCELLED"}
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def _lines(caplog, method: str) -> list[str]:
    call_log.flush()
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(method + " ")]


def test_a_request_grpc_refuses_is_logged_with_the_status_the_client_got(registry, caplog):
    """Finding 6: a request over max-message-mb is refused by grpc itself, which sends the
    client RESOURCE_EXHAUSTED and hands the handler no message: the call's line names
    RESOURCE_EXHAUSTED, with no traceback (or a reset: grpc.aio does not tell which, see
    the reset's test); a call that truly sends no message is still INVALID_ARGUMENT for
    both."""
    graph = GraphBuilder()
    for _ in range(2_000):
        graph.leaf(1.0)
    big = pb.EvaluateRequest(graph=graph.proto())
    with (
        caplog.at_level(logging.INFO),
        running_server(registry, max_message_bytes=1024) as server,
        channel_to(server.port) as channel,
    ):
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as caught:
                stub_on(channel).Evaluate(big, timeout=30)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in caught.value.details()
        assert wait_until(lambda: len(_lines(caplog, "Evaluate")) == 3, timeout=30)
        assert {_status(line) for line in _lines(caplog, "Evaluate")} == {REFUSED_OR_RESET}
        empty = channel.stream_stream(EVALUATE)(iter(()), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            list(empty)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert wait_until(lambda: len(_lines(caplog, "Evaluate")) == 4, timeout=30)
        assert _status(_lines(caplog, "Evaluate")[-1]) == "INVALID_ARGUMENT"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def _status(line: str) -> str:
    return line.split("status=")[1].split()[0]


def test_a_compressed_request_is_logged_with_the_status_grpc_sent(registry, caplog):
    """grpc refuses a gzip request at its headers (the server enables no compression) and
    sends the client UNIMPLEMENTED; the handler sees only a cancellation, as for a client
    that cancels before sending its message. The line names UNIMPLEMENTED (it said
    CANCELLED before), with no traceback."""
    graph = GraphBuilder()
    graph.op("neg", graph.leaf(0.5))
    with (
        caplog.at_level(logging.INFO),
        running_server(registry) as server,
        grpc.insecure_channel(
            f"127.0.0.1:{server.port}", compression=grpc.Compression.Gzip
        ) as gzipped,
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub_on(gzipped).Evaluate(pb.EvaluateRequest(graph=graph.proto()), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert wait_until(lambda: _lines(caplog, "Evaluate"), timeout=30)
    assert [_status(line) for line in _lines(caplog, "Evaluate")] == [CANCELLED_OR_REFUSED]
    assert "UNIMPLEMENTED" in CANCELLED_OR_REFUSED
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize("wait_s", [0.0, 0.3])
def test_a_stream_reset_before_its_message_is_not_logged_as_a_refusal_alone(
    registry, caplog, wait_s
):
    """A client opens a call and resets it (RST_STREAM, CANCEL) before sending its message,
    at once or after a while: the client got no status, it cancelled. The handler sees
    either a cancellation or the EOF of a message grpc refused, and cannot tell which: the
    line names the reset or the cancel, never RESOURCE_EXHAUSTED alone (as it did)."""
    with (
        caplog.at_level(logging.INFO),
        running_server(registry) as server,
        H2GrpcClient(server.port) as client,
    ):
        stream_id = client.open_stream(EVALUATE)
        time.sleep(wait_s)
        client.reset(stream_id)
        assert wait_until(lambda: _lines(caplog, "Evaluate"), timeout=30)
    [status] = [_status(line) for line in _lines(caplog, "Evaluate")]
    assert status in (REFUSED_OR_RESET, CANCELLED_OR_REFUSED), status
    assert "RESET" in REFUSED_OR_RESET and "CANCELLED" in CANCELLED_OR_REFUSED
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
