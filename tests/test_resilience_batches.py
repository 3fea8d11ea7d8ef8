"""A batch evaluated in row blocks takes at most half the calls' budget (issue 19).

In issue 19's soak the legitimate streams refused after their budget wait were waiting
behind one abusive batch (a 1,000-node chain over 100,000 rows) that held 320 of the
calls' 512 MiB for the seconds its row blocks took. A batch that would not fit half the
budget whole now runs in blocks that hold at most half of it, and other calls are served
beside it (``GradientServicer._job_memory``)."""

import numpy as np
from hardening import wait_until
from metered import sample, scrape
from resilience import (
    HANG_S,
    Naps,
    chain_graph,
    channel_to,
    check_chain_stream,
    nap_server,
    stub_on,
)

from bench.ports import free_port
from gradserve.v1 import gradserve_pb2 as pb

BUDGET_MIB = 64  # the calls' part: 32 MiB
NEGS, BATCH_ROWS = 200, 10_000  # x, nap(x), then 200 negations: about 80 MB to evaluate whole


def _napping_batch() -> pb.EvaluateRequest:
    """x over BATCH_ROWS rows, nap(x) (the identity, which waits for the test), then NEGS
    negations; the leaf's value and gradient, (-1)^NEGS, are asked for."""
    xs = np.linspace(-1, 1, BATCH_ROWS)
    graph = chain_graph("neg", NEGS + 1, xs.tolist())
    graph.op_names.append("nap")
    graph.node_ops[1] = len(graph.op_names)  # the first step naps instead of negating
    return pb.EvaluateRequest(graph=graph, rows=BATCH_ROWS, nodes=[0])


def test_a_batch_in_row_blocks_leaves_half_the_budget_to_other_calls(tmp_path):
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
        batch = stub_on(batch_channel).Evaluate.future(_napping_batch(), timeout=6 * HANG_S)
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
        xs = np.linspace(-1, 1, BATCH_ROWS)
        np.testing.assert_array_equal(reply.values, xs)
        np.testing.assert_array_equal(reply.grads, np.full(BATCH_ROWS, (-1.0) ** NEGS))
        assert naps.count() > 1  # it ran in blocks
        assert held <= BUDGET_MIB / 2 / 2 * 2**20 + 2**20  # half the calls' part, and its request
