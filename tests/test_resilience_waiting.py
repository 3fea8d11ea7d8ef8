"""Waiting costs nothing (issue 11, findings 1, 2 and 4): calls that never send their request,
streams nobody reads and HTTP/2 readers that keep their window shut hold no handler thread
and no unbounded memory; health and honest calls answer meanwhile."""

import itertools
import re
import signal
import subprocess
import time
from contextlib import ExitStack

import grpc
import pytest
from hardening import wait_until
from metered import sample, scrape
from resilience import (
    AUTHORISED,
    EVALUATE,
    EVALUATE_STREAM,
    HANG_S,
    MARGIN_MIB,
    REFLECTION,
    HalfOpenCall,
    MemoryWatch,
    channel_to,
    health_status,
    idle_mib,
    never_read_streams,
    repeated_nodes,
    replying,
    serve,
    stub_on,
    token_file,
    two_nodes,
)

from bench.h2_client import H2GrpcClient
from bench.ports import free_port
from gradserve.v1 import gradserve_pb2 as pb

HALF_OPEN_CALLS = 80  # more than --threads, and than the old --max-concurrent-calls (64)


def _honest_call_answers(channel, metadata=()) -> None:
    """An Evaluate of y = -x at x = 0.5 answers, right, within the hang bound."""
    reply = stub_on(channel).Evaluate(
        pb.EvaluateRequest(graph=two_nodes()), metadata=metadata, timeout=HANG_S
    )
    assert list(reply.values) == [0.5, -0.5] and list(reply.grads) == [-1.0, 1.0]


@pytest.mark.parametrize("workers, connections", [(1, 2), (2, 6)])
def test_half_open_calls_hold_no_thread(tmp_path, workers, connections):
    """80 authorised calls that send headers but never their message, over Evaluate,
    EvaluateStream and reflection, spread over ``connections`` connections (few enough per
    connection for any HTTP/2 stream limit): health and an authorised Evaluate still answer,
    on those connections and on new ones."""
    with (
        serve("--auth-token-file", token_file(tmp_path), workers=workers) as served,
        ExitStack() as stack,
    ):
        channels = [
            stack.enter_context(channel_to(served.port, own_connection=i))
            for i in range(connections)
        ]
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=HANG_S)
        methods = itertools.cycle([EVALUATE, EVALUATE_STREAM, REFLECTION])
        half_open = [
            HalfOpenCall(channels[i % connections], next(methods), AUTHORISED)
            for i in range(HALF_OPEN_CALLS)
        ]
        for call in half_open:
            stack.callback(call.close)
        # Each probe goes out on a connection after that connection's half-open calls, so
        # the server has them; then from clients of their own.
        for channel in channels:
            assert health_status(channel) == "SERVING"
            _honest_call_answers(channel, AUTHORISED)
        for i in range(connections):
            with channel_to(served.port, own_connection=connections + i) as channel:
                assert health_status(channel) == "SERVING"
                _honest_call_answers(channel, AUTHORISED)


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),)])
def test_half_open_calls_without_the_token_end_unauthenticated_from_their_metadata(
    tmp_path, metadata
):
    """A call without the right token ends UNAUTHENTICATED while its request generator is
    still blocked: the server decided from the headers alone."""
    with serve("--auth-token-file", token_file(tmp_path)) as served, ExitStack() as stack:
        channel = stack.enter_context(channel_to(served.port))
        methods = itertools.cycle([EVALUATE, EVALUATE_STREAM, REFLECTION])
        half_open = [HalfOpenCall(channel, next(methods), metadata) for _ in range(HALF_OPEN_CALLS)]
        for call in half_open:
            stack.callback(call.close)
        # Their request generators stay blocked until close(): the calls must end without.
        ended = wait_until(lambda: all(call.done.is_set() for call in half_open), HANG_S)
        codes = {call.call.code() if call.done.is_set() else None for call in half_open}
        assert ended and codes == {grpc.StatusCode.UNAUTHENTICATED}, codes
        assert health_status(channel) == "SERVING"
        _honest_call_answers(channel, AUTHORISED)


NEVER_READ = 8  # the default --threads of the old server: enough to stop it
SEND_TIMEOUT_S = 2
SEND_TIMEOUT_LINE = r"(?i)send[ _-]timeout"


def _send_timeouts(served) -> int:
    return len(re.findall(SEND_TIMEOUT_LINE + r".*\n", served.log))


def test_never_read_streams_are_cancelled_after_the_send_timeout():
    """8 EvaluateStream calls for 1,000,000 results whose client never reads: health and
    other calls answer meanwhile; after --send-timeout the server cancels them, says so in
    its log and, once the client lets go, gives back every byte they held of the memory
    budget (its gauge back at 0, each round); SIGTERM with a third round open exits well
    before --grace."""
    request = repeated_nodes(1_000_000)
    metrics_port = free_port()
    flags = ("--grace", "30", "--metrics-port", str(metrics_port))
    with (
        serve(*flags, settings={"send-timeout": SEND_TIMEOUT_S}) as served,
        channel_to(served.port) as channel,
    ):
        stub = stub_on(channel)

        def budget_used() -> float:
            return sample(scrape(metrics_port), "gradserve_memory_budget_used_bytes")

        for _ in range(2):
            logged = _send_timeouts(served)
            streams = never_read_streams(stub, request, NEVER_READ)
            assert replying(streams, HANG_S)
            assert health_status(channel) == "SERVING"
            _honest_call_answers(channel)
            # Whether the client sees the end of a stream whose messages it never reads is up
            # to its gRPC library; the server's log is what tells.
            assert wait_until(
                lambda n=logged: _send_timeouts(served) > n, SEND_TIMEOUT_S + 3 * HANG_S
            ), f"no new send-timeout line in the log:\n{served.log}"
            assert budget_used() > 0  # the abandoned calls' messages are still charged
            for stream in streams:
                stream.cancel()
            assert wait_until(lambda: budget_used() == 0, HANG_S), budget_used()

        third = never_read_streams(stub, request, NEVER_READ)
        assert replying(third, HANG_S)
        assert health_status(channel) == "SERVING"
        started = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(timeout=25)  # a hang bound: --grace is 30
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIGTERM waited for the never-read streams:\n{served.log}")
        print(f"exit {time.monotonic() - started:.1f} s after SIGTERM")
        for stream in third:
            stream.cancel()


STALLED_READERS = 20
STALLED_REPLY_NODES, STALLED_REPLY_ROWS = 3875, 1000  # 3875 x 1000 x 16 bytes: a 62 MB reply
BUDGET_MIB = 512
STALLED_SEND_TIMEOUT_S = 3
STALLED_CONNECTION_AGE_S = 4
GRPC_OK = 0


def test_stalled_http2_readers_cannot_pin_memory():
    """20 raw HTTP/2 clients each ask for a 62 MB reply and keep their stream window at 0.
    With --max-memory-mb 512 --send-timeout 3 the server stays within its budget (plus its
    idle memory and a margin: a stalled reply stays charged to the budget), answers health
    and an honest call meanwhile, and the stalled streams end (or are refused at once),
    never OK. grpc.aio can end no single call whose write waits for the reader's window, so
    they end when their connection reaches --max-connection-age and has had the default
    deadline as its grace (both a few seconds here)."""
    request = repeated_nodes(STALLED_REPLY_NODES, rows=STALLED_REPLY_ROWS).SerializeToString()
    settings = {
        "max-memory-mb": BUDGET_MIB,
        "send-timeout": STALLED_SEND_TIMEOUT_S,
        "max-connection-age": STALLED_CONNECTION_AGE_S,
        "default-deadline": STALLED_CONNECTION_AGE_S,
    }
    with serve(settings=settings) as served, channel_to(served.port) as channel:
        _honest_call_answers(channel)
        limit = idle_mib(served) + BUDGET_MIB + MARGIN_MIB
        with MemoryWatch(served, limit) as watch, ExitStack() as stack:
            clients = [
                stack.enter_context(H2GrpcClient(served.port, window=0))
                for _ in range(STALLED_READERS)
            ]
            streams = [client.start_call(EVALUATE, request) for client in clients]
            assert health_status(channel) == "SERVING"
            _honest_call_answers(channel)
            # Once the server answers one of them (its reply is stuck behind the window):
            answered = clients[0].pump(
                lambda: (
                    clients[0].streams[streams[0]].headers is not None
                    or clients[0].streams[streams[0]].finished
                ),
                time.monotonic() + 3 * HANG_S,
            )
            assert answered, "the server never answered the first stalled call"
            assert health_status(channel) == "SERVING"
            _honest_call_answers(channel)
            deadline = time.monotonic() + 6 * HANG_S
            for client, stream_id in zip(clients, streams, strict=True):
                assert client.pump(lambda c=client, s=stream_id: c.streams[s].finished, deadline), (
                    f"stream {stream_id} was neither reset nor ended: {client.streams[stream_id]}"
                )
            # grpc ends a cancelled stream with trailers when it can (HEADERS frames are not
            # flow-controlled, and the unsent data is dropped), else with RST_STREAM.
            states = [c.streams[s] for c, s in zip(clients, streams, strict=True)]
            endings = [s.grpc_status if s.reset_code is None else "RST_STREAM" for s in states]
            print("stalled streams ended with:", endings)
            assert GRPC_OK not in endings, endings
            assert health_status(channel) == "SERVING"
            _honest_call_answers(channel)
        watch.check()


def test_the_raw_http2_client_speaks_grpc_and_holds_its_window():
    """The tool the stalled-reader test relies on: with a window of 0 the server's headers
    arrive but no data; once the window opens the whole reply arrives, right."""
    with serve() as served, H2GrpcClient(served.port, window=0, keep_data=True) as client:
        stream_id = client.start_call(EVALUATE, repeated_nodes(3).SerializeToString())
        state = client.streams[stream_id]
        deadline = time.monotonic() + HANG_S
        assert client.pump(lambda: state.headers is not None, deadline), state
        assert state.data_bytes == 0 and not state.finished
        client.open_window(stream_id, 1 << 20)
        assert client.wait_finished(stream_id, HANG_S) and state.grpc_status == GRPC_OK, state
    flag, length = state.data[0], int.from_bytes(state.data[1:5], "big")
    assert flag == 0 and length == len(state.data) - 5
    reply = pb.EvaluateResponse.FromString(bytes(state.data[5:]))
    assert list(reply.node_ids) == [0, 0, 0] and list(reply.values) == [0.5] * 3
    assert list(reply.grads) == [-1.0] * 3
