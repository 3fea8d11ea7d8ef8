"""A stream whose reader does not read holds its results, not what computing them took
(issue 19): never let waiting hold what computing needs.

An EvaluateStream's evaluation is charged to the budget while it computes; once a row
block is evaluated, the engine's scratch is gone and the call holds the block's results
and the chunk being sent. Its charge now drops to that while the chunks wait for the
reader (``GradientServicer.EvaluateStream``)."""

import time
from contextlib import ExitStack

from hardening import wait_until
from metered import sample, scrape
from resilience import (
    EVALUATE_STREAM,
    HANG_S,
    channel_to,
    serve,
    stub_on,
)
from test_resilience_queued import CHAIN, ROWS, chain_request, check_chain_stream

from bench.h2_client import H2GrpcClient
from bench.ports import free_port

BUDGET_MIB = 256  # the calls' part: 128 MiB; each chain stream is charged 35.7 to evaluate
NEVER_READ = 3


def test_streams_whose_readers_never_read_leave_the_budget_to_computing():
    """Three chain streams over many rows whose client never reads: each is evaluated and
    waits for its reader with its first chunk. Another client's stream of the same size
    then succeeds, right. (Before, each unread stream held its evaluation's 35.7 MiB,
    107 of the 128 MiB, and the other stream was refused RESOURCE_EXHAUSTED after its 5 s
    budget wait.)"""
    metrics_port = free_port()
    flags = ("--max-memory-mb", str(BUDGET_MIB), "--metrics-port", str(metrics_port))
    with (
        serve(*flags) as served,
        channel_to(served.port) as channel,
        ExitStack() as stack,
    ):

        def unread(metric: str) -> float:
            name = f"gradserve_memory_budget_{metric}"
            return sample(scrape(metrics_port), name, method="EvaluateStream", state="sending")

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
