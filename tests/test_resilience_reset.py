"""Rapid reset (issue 19, finding 7): one connection's streams are capped, so a client that
opens and resets streams keeps a bounded number of calls queued ahead of others'.

grpc core counts the streams a client has reset, whose calls the server has not finished,
against SETTINGS_MAX_CONCURRENT_STREAMS; the server announces 64 (or
--max-calls-per-connection, when larger). bench/rapid_reset.py measures what it buys
(a legitimate call's p50 under 13k resets a second, BENCHMARKS.md); these tests check the
limit a client is told, and that grpc core refuses streams past it."""

import time

import h2.errors
import pytest

from bench.h2_client import H2GrpcClient
from gradserve.server.service.app import MAX_STREAMS_PER_CONNECTION, running_server
from gradserve.server.service.limits import Limits

EVALUATE = "/gradserve.v1.GradientService/Evaluate"


def _settings_read(client: H2GrpcClient) -> None:
    """Wait for the server's SETTINGS (h2 assumes no stream limit until then)."""
    assert client.pump(
        lambda: client.conn.remote_settings.max_concurrent_streams < 2**31,
        time.monotonic() + 5,
    )


def _announced(port: int) -> int:
    with H2GrpcClient(port) as client:
        _settings_read(client)
        return client.conn.remote_settings.max_concurrent_streams


@pytest.mark.parametrize(
    "limits, expected",
    [(None, MAX_STREAMS_PER_CONNECTION), (Limits(calls_per_connection=100), 100)],
)
def test_the_server_announces_its_streams_per_connection(registry, limits, expected):
    assert MAX_STREAMS_PER_CONNECTION == 64
    with running_server(registry, limits=limits) as server:
        assert _announced(server.port) == expected


def test_streams_past_the_limit_are_refused_by_grpc_core(registry):
    """A client ignoring the announced limit opens 80 streams that never send their
    message: the 16 past the limit are refused (RST_STREAM REFUSED_STREAM) by grpc core;
    the first 64 are not (they wait for their message, or lose their read slot)."""
    with running_server(registry) as server, H2GrpcClient(server.port) as client:
        _settings_read(client)
        client.conn.remote_settings.max_concurrent_streams = 2**31 - 1  # ignore it
        client.conn.remote_settings.acknowledge()
        states = [client.streams[client.open_stream(EVALUATE)] for _ in range(80)]
        refused = h2.errors.ErrorCodes.REFUSED_STREAM

        def refused_count() -> int:
            return sum(state.reset_code == refused for state in states)

        assert client.pump(lambda: refused_count() >= 16, time.monotonic() + 10)
        client.pump(lambda: False, time.monotonic() + 0.2)  # any more refusals come now
        assert [state.reset_code == refused for state in states] == [False] * 64 + [True] * 16
