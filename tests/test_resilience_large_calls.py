"""Large calls of several connections hold at most half the calls' budget together, so an
ordinary call of another connection is admitted at once (issue 19, ``large_calls``).

In issue 19's soak each abusive kind stayed within its own bound (a batch's row blocks,
unread unary replies within the sending share, never-read streams, the wide HVP), but the
bounds added up to the whole budget, and the legitimate streams were refused after their
budget wait. Here four batches, each on a connection of its own and each at its bound (a
row block of a quarter of the calls' budget), would hold all of it; two of them hold the
large calls' share while their first block naps, the other two wait for the share, and
another connection's ordinary stream is served meanwhile."""

from contextlib import ExitStack

import grpc
import numpy as np
from hardening import wait_until
from metered import sample, scrape
from resilience import (
    HANG_S,
    Naps,
    channel_to,
    check_chain_stream,
    check_napping_batch,
    nap_server,
    napping_batch,
    stub_on,
)

from bench.ports import free_port

BUDGET_MIB = 256  # the calls' part: 128 MiB; the large calls' share 64, above 16 MiB each
NEGS, BATCH_ROWS = 200, 20_000  # x, nap(x), 200 negations: 160 MB whole, blocks of 32 MiB
BATCHES = 4  # 4 blocks of 32 MiB: the whole calls' budget without the share
MIB = 2**20


def test_large_calls_at_their_bounds_leave_another_connection_its_ordinary_call(tmp_path):
    """Four napping batches of four connections: two hold the share's 64 MiB, two wait for
    it, and the ledger says so. A 9 MiB stream of a fifth connection is served, right,
    while they nap: the naps end only once it has its answer. (Before, the four batches
    held the whole 128 MiB and the stream was refused RESOURCE_EXHAUSTED after its 5 s
    budget wait.) Then the napping batches answer right; the two that waited answer
    right too, or, if the stream took longer than their wait, are refused naming the
    share; and everything is given back."""
    metrics_port = free_port()
    naps = Naps(tmp_path)
    flags = ("--threads", "4", "--max-memory-mb", str(BUDGET_MIB))
    with (
        nap_server(tmp_path, *flags, "--metrics-port", str(metrics_port)) as served,
        channel_to(served.port, own_connection=BATCHES) as channel,
        ExitStack() as stack,
    ):
        channels = [
            stack.enter_context(channel_to(served.port, own_connection=k)) for k in range(BATCHES)
        ]
        request = napping_batch(NEGS, BATCH_ROWS)
        batches = [stub_on(c).Evaluate.future(request, timeout=6 * HANG_S) for c in channels]

        def ledger(metric: str, state: str) -> float:
            text = scrape(metrics_port)
            return sample(text, f"gradserve_memory_budget_{metric}", method="Evaluate", state=state)

        assert wait_until(lambda: naps.count() == 2, HANG_S), "two batches never napped"
        assert wait_until(
            lambda: ledger("holding_calls", "waiting_for_large_calls_share") == 2, HANG_S
        ), scrape(metrics_port)
        text = scrape(metrics_port)
        share = sample(text, "gradserve_large_calls_share_used_bytes")
        computing = ledger("held_bytes", "computing")
        assert computing == share and 32 * MIB < share <= 64 * MIB  # two blocks, in the share
        assert ledger("holding_calls", "computing") == 2
        try:
            check_chain_stream(stub_on(channel), 60, np.arange(2_000) / 2_000)
        finally:
            naps.release.touch()
        refused = []
        for batch in batches:
            try:
                check_napping_batch(batch.result(timeout=6 * HANG_S), NEGS, BATCH_ROWS)
            except grpc.RpcError as error:
                refused.append((error.code(), error.details()))
        assert len(refused) <= 2, refused  # the two that napped answered
        for code, details in refused:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "share for large calls (64.0 MiB" in details
        assert wait_until(
            lambda: sample(scrape(metrics_port), "gradserve_memory_budget_used_bytes") == 0,
            HANG_S,
        )
        assert sample(scrape(metrics_port), "gradserve_large_calls_share_used_bytes") == 0
        refusals = sample(scrape(metrics_port), "gradserve_large_calls_share_refused_total")
        assert refusals == len(refused)
