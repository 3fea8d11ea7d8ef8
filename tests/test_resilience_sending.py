"""Readers that never read hold only the sending share (issue 19): grpc.aio cannot end a
call whose unary reply waits for the reader's window, so such replies are admitted
against a share of the calls' budget before they are evaluated, and the rest of the
budget stays for computing."""

import time
from contextlib import ExitStack

import numpy as np
from hardening import wait_until
from metered import sample, scrape
from resilience import (
    EVALUATE,
    HANG_S,
    channel_to,
    check_chain_stream,
    repeated_nodes,
    serve,
    stub_on,
)

from bench.h2_client import H2GrpcClient
from bench.ports import free_port

STALLED_READERS = 5
STALLED_REPLY = repeated_nodes(3875, rows=1000)  # 3875 x 1000 x 16 bytes: a 62 MB reply
REPLY_CHARGE_MIB = 2 * 62e6 / 2**20  # two copies while grpc holds it
# The honest stream: y_k = -y_(k-1), 2001 nodes x 2500 rows, about 200 MiB to evaluate:
# more than the 512 MiB of the default budget's calls leave beside three stalled replies.
CHAIN, ROWS = 2000, 2500
RESOURCE_EXHAUSTED = 8


def _honest_stream(stub) -> None:
    """A large EvaluateStream answers, right (closed forms: ``check_chain_stream``)."""
    check_chain_stream(stub, CHAIN, np.arange(ROWS) + 0.5)


def test_readers_that_never_read_leave_the_budget_for_computing():
    """Five raw HTTP/2 clients ask for a 62 MB unary reply each and keep their window at 0,
    against a default server (the calls' budget 512 MiB). The sending share (a quarter of
    it, 128 MiB) holds one such reply; the others are refused RESOURCE_EXHAUSTED naming the
    share, having held only their requests. A large honest EvaluateStream then succeeds.
    (Before the share, three stalled replies held 356 of the 512 MiB, and the stream was
    refused after its 5 s budget wait.)"""
    metrics_port = free_port()
    with (
        serve("--metrics-port", str(metrics_port)) as served,
        channel_to(served.port) as channel,
        ExitStack() as stack,
    ):

        def used_mib(gauge: str = "gradserve_memory_budget_used_bytes") -> float:
            return sample(scrape(metrics_port), gauge) / 2**20

        def sending_mib() -> float:
            return used_mib("gradserve_sending_share_used_bytes")

        clients = [
            stack.enter_context(H2GrpcClient(served.port, window=0)) for _ in range(STALLED_READERS)
        ]
        request = STALLED_REPLY.SerializeToString()
        streams = [client.start_call(EVALUATE, request) for client in clients]
        states = [c.streams[s] for c, s in zip(clients, streams, strict=True)]
        # Until each is refused, or is being sent (its headers are out, its data stuck):
        deadline = time.monotonic() + 3 * HANG_S
        while not all(s.finished or s.headers is not None for s in states):
            assert time.monotonic() < deadline, states
            for client, state in zip(clients, states, strict=True):
                client.pump(lambda s=state: s.finished, time.monotonic() + 0.1)
        held = used_mib()
        print(f"stalled replies hold {held:.0f} MiB of the budget")
        _honest_stream(stub_on(channel))

        refused = [s for s in states if s.finished]
        assert len(refused) == STALLED_READERS - 1, states
        for state in refused:
            assert state.grpc_status == RESOURCE_EXHAUSTED, state
            message = dict(state.trailers or state.headers)[b"grpc-message"]
            assert b"share for unary replies" in message.replace(b"%20", b" "), state
        assert REPLY_CHARGE_MIB < held < 2 * REPLY_CHARGE_MIB, held  # one reply, not two
        refusals = sample(scrape(metrics_port), "gradserve_sending_share_refused_total")
        assert refusals == STALLED_READERS - 1
        # What the stalled reply holds of the share is its two copies, until grpc lets go
        # of it: when its client disconnects.
        assert REPLY_CHARGE_MIB <= sending_mib() < REPLY_CHARGE_MIB + 1, sending_mib()
        stack.close()
        assert wait_until(lambda: sending_mib() == 0 and used_mib() == 0, HANG_S), (
            sending_mib(),
            used_mib(),
        )
