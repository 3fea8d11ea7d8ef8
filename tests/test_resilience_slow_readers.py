"""A stream whose reader does not read holds its results, not what computing them took
(issue 19): never let waiting hold what computing needs.

An EvaluateStream's evaluation is charged to the budget while it computes; once a row
block is evaluated, the engine's scratch is gone and the call holds the block's results
and the chunk being sent. Its charge now drops to that while the chunks wait for the
reader (``GradientServicer.EvaluateStream``)."""

import time
from contextlib import ExitStack, contextmanager

from hardening import wait_until
from metered import sample, scrape
from resilience import (
    EVALUATE_STREAM,
    HANG_S,
    channel_to,
    repeated_nodes,
    serve,
    stub_on,
)
from test_resilience_queued import CHAIN, ROWS, chain_request, check_chain_stream

from bench.h2_client import H2GrpcClient
from bench.ports import free_port

# The calls' part is half: 136 MiB; each chain stream is charged 35.7 to evaluate. Its
# eighth, 17 MiB, is the least charge of a large call (large_calls): a stalled stream of a
# million results (11.8 MiB) stays an ordinary call, as in issue 19's soak, where the budget
# is larger; only the stall timeout then takes its memory back.
BUDGET_MIB = 272
CALLS_MIB = BUDGET_MIB // 2
NEVER_READ = 3


@contextmanager
def _budgeted_server():
    """A server of BUDGET_MIB with metrics, a channel to it, a stack for raw HTTP/2
    clients (closed before the server stops), and its metrics port."""
    metrics_port = free_port()
    flags = ("--max-memory-mb", str(BUDGET_MIB), "--metrics-port", str(metrics_port))
    with (
        serve(*flags) as served,
        channel_to(served.port) as channel,
        ExitStack() as stack,
    ):
        yield served, channel, stack, metrics_port


def _streams_sending(metrics_port: int, metric: str) -> float:
    """The budget's ledger (held_bytes, holding_calls) of EvaluateStreams whose chunk waits
    for its reader."""
    name = f"gradserve_memory_budget_{metric}"
    return sample(scrape(metrics_port), name, method="EvaluateStream", state="sending")


def test_streams_whose_readers_never_read_leave_the_budget_to_computing():
    """Three chain streams over many rows whose client never reads: each is evaluated and
    waits for its reader with its first chunk. Another client's stream of the same size
    then succeeds, right. (Before, each unread stream held its evaluation's 35.7 MiB,
    107 of the 128 MiB, and the other stream was refused RESOURCE_EXHAUSTED after its 5 s
    budget wait.)"""
    with _budgeted_server() as (served, channel, stack, metrics_port):

        def unread(metric: str) -> float:
            return _streams_sending(metrics_port, metric)

        raw = chain_request().SerializeToString()
        for _ in range(NEVER_READ):  # raw HTTP/2 clients that keep their window at 0
            client = stack.enter_context(H2GrpcClient(served.port, window=0))
            client.start_call(EVALUATE_STREAM, raw)
        assert wait_until(lambda: unread("holding_calls") == NEVER_READ, 3 * HANG_S), [
            line for line in scrape(metrics_port).splitlines() if "_budget_" in line
        ]
        held = unread("held_bytes")
        print(f"{NEVER_READ} unread streams hold {held / 2**20:.1f} MiB")
        started = time.monotonic()
        check_chain_stream(stub_on(channel))
        print(f"the other stream took {time.monotonic() - started:.1f} s")
        # Each holds its request, the block's results (CHAIN + 1 nodes x ROWS rows, values
        # and gradients) and a chunk: far less than its evaluation.
        results = NEVER_READ * 16 * (CHAIN + 1) * ROWS
        assert results < held < 2 * results, (held, results)
        stack.close()  # the unread clients leave
        assert wait_until(
            lambda: sample(scrape(metrics_port), "gradserve_memory_budget_used_bytes") == 0,
            HANG_S,
        )


# Never-read streams of a million results: 11.8 MiB each (their ids, 3.8, and a chunk, 8;
# their request let go), most of CALLS_MIB.
STALLED = 10
CHUNK_MIB = 1.1  # a chunk of 65,536 results of node 0: a value, a gradient and an id each
WHOLE_STREAM_MIB = 16  # a million results of node 0


def test_stalled_streams_give_their_memory_to_a_call_waiting_for_it():
    """Issue 19's soak: ten streams of a million results whose clients never read (raw
    HTTP/2, windows at 0) hold about 12 MiB each, most of the calls' 136 MiB. Another
    client's stream of 35.7 MiB waits for memory; once the stalled streams' chunks have
    waited --stream-stall-timeout (3 s, within the 5 s budget wait), those looked at while
    it waits are abandoned and hold only the chunk grpc is writing (two copies each), and
    that stream succeeds, right (closed forms). Before, they held it all for the 30 s send
    timeout, and it was refused RESOURCE_EXHAUSTED after its budget wait. Then the stalled
    readers all read: an abandoned one gets its chunk, then RESOURCE_EXHAUSTED naming the
    setting, at once; one that was not (no call waited for memory when it was looked at)
    gets its whole stream and OK. Once the clients leave, the budget is back at 0."""
    with _budgeted_server() as (served, channel, stack, metrics_port):

        def stalled(metric: str) -> float:
            return _streams_sending(metrics_port, metric)

        raw = repeated_nodes(1_000_000).SerializeToString()
        readers = []
        for _ in range(STALLED):
            client = stack.enter_context(H2GrpcClient(served.port, window=0))
            readers.append((client, client.start_call(EVALUATE_STREAM, raw)))
        assert wait_until(lambda: stalled("holding_calls") == STALLED, 3 * HANG_S)
        held_before = stalled("held_bytes")
        check_chain_stream(stub_on(channel))
        held_after = stalled("held_bytes")
        print(f"stalled streams: {held_before / 2**20:.1f} -> {held_after / 2**20:.1f} MiB")
        # What the other stream lacked: its 35.7 MiB less the budget's free part.
        assert held_after < held_before - (35 - (CALLS_MIB - held_before / 2**20)) * 2**20
        started = time.monotonic()
        for client, stream_id in readers:
            client.open_window(stream_id, 2**26)
        for client, stream_id in readers:
            assert client.wait_finished(stream_id, HANG_S)
        took = time.monotonic() - started
        states = [client.streams[stream_id] for client, stream_id in readers]
        abandoned = [state for state in states if state.grpc_status == 8]  # RESOURCE_EXHAUSTED
        served_whole = [state for state in states if state.grpc_status == 0]
        print(f"{len(abandoned)} abandoned, {len(served_whole)} served whole in {took:.1f} s")
        assert len(abandoned) + len(served_whole) == STALLED and abandoned
        for state in abandoned:
            assert 0 < state.data_bytes < 2 * CHUNK_MIB * 2**20  # its chunk in flight
            assert b"stream-stall-timeout" in state.trailers[b"grpc-message"]
        for state in served_whole:
            assert state.data_bytes > WHOLE_STREAM_MIB * 10**6
        assert held_after >= len(served_whole) * 8 * 2**20  # their chunks at least
        stack.close()  # the stalled clients leave
        assert wait_until(
            lambda: sample(scrape(metrics_port), "gradserve_memory_budget_used_bytes") == 0,
            HANG_S,
        )
