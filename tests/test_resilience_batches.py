"""A batch evaluated in row blocks takes at most a quarter of the calls' budget (issue 19).

In issue 19's soak the legitimate streams refused after their budget wait were waiting
behind one abusive batch (a 1,000-node chain over 100,000 rows) that held 320 of the
calls' 512 MiB for the seconds its row blocks took. A batch that would not fit a quarter
of the budget whole (half the large calls' share: ``large_calls``) now runs in blocks that
hold at most that, and other calls are served beside it (``GradientServicer._job_memory``).
"""

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

BUDGET_MIB = 64  # the calls' part: 32 MiB
NEGS, BATCH_ROWS = 200, 10_000  # x, nap(x), then 200 negations: about 80 MB to evaluate whole


def test_a_batch_in_row_blocks_leaves_most_of_the_budget_to_other_calls(tmp_path):
    """A batch too large for the budget whole is evaluated in row blocks; its first block
    naps longer than the budget wait. Meanwhile another client's stream (9 MiB) is
    served, right; then the batch ends, right. (Before, the batch's blocks held all
    32 MiB, and the stream was refused RESOURCE_EXHAUSTED after its 5 s budget wait.)"""
    metrics_port = free_port()
    naps = Naps(tmp_path)
    flags = ("--threads", "2", "--max-memory-mb", str(BUDGET_MIB))
    with (
        nap_server(tmp_path, *flags, "--metrics-port", str(metrics_port)) as served,
        channel_to(served.port, own_connection=1) as batch_channel,
        channel_to(served.port, own_connection=2) as channel,
    ):
        batch = stub_on(batch_channel).Evaluate.future(
            napping_batch(NEGS, BATCH_ROWS), timeout=6 * HANG_S
        )
        assert wait_until(lambda: naps.count() == 1, HANG_S), "the batch never napped"
        held = sample(scrape(metrics_port), "gradserve_memory_budget_used_bytes")
        print(f"the napping batch holds {held / 2**20:.1f} MiB")
        try:
            # The batch naps until released, so the stream is served beside it or, waiting
            # for the memory the batch holds, refused after its budget wait: no timing margin.
            check_chain_stream(stub_on(channel), 60, np.arange(2_000) / 2_000)
            assert naps.count() == 1, "the batch went on before it was released"
        finally:
            naps.release.touch()
        reply = batch.result(timeout=6 * HANG_S)
        check_napping_batch(reply, NEGS, BATCH_ROWS)
        assert naps.count() > 1  # it ran in blocks
        quarter = BUDGET_MIB / 2 / 4 * 2**20  # of the calls' part
        assert held <= quarter + 2**20  # and its request
