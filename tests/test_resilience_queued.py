"""Calls queued for the evaluation threads hold none of what computing needs (issue 19).

In issue 19's soak, up to 21 large streams waited for the server's 4 threads while each
already held its whole evaluation's charge: 396 of the calls' 512 MiB, held by calls that
were not computing. With the abusers' replies holding the rest, another client's large
stream was refused after its budget wait. A call now takes each step's memory (decoding,
compiling, evaluating) once it has a thread for it (``CallScope.compute``)."""

import threading
import time

import grpc
import numpy as np
import pytest
import resilience
from hardening import wait_until
from metered import sample, scrape
from resilience import HANG_S, Naps, chain_graph, channel_to, nap_request, nap_server, stub_on

from bench.ports import free_port
from gradserve.v1 import gradserve_pb2 as pb

# The calls' part of a budget is half of it (a quarter each to plans and arriving requests).
# Six streams of either kind below would need more of it at once than it has: on a 256 MiB
# budget (128 for calls), 35.7 MiB each to evaluate the chain over many rows; on a 40 MiB
# one (20 for calls), 4.9 MiB each to compile the long chain (its request and its plan).
CHAIN, ROWS = 60, 8_000  # y_k = -y_(k-1) over ROWS rows: planned on the loop
CHAIN_XS = np.arange(ROWS) / ROWS - 0.5
LONG_CHAIN = 12_000  # y_k = -y_(k-1), one row: more nodes than are planned on the loop
STREAMS = 6
BUDGET_WAIT_S = 5  # admission.DEFAULT_WAIT_S: how long a call may wait for memory


def chain_request() -> pb.EvaluateRequest:
    """The chain of CHAIN negations over ROWS rows of x."""
    return pb.EvaluateRequest(graph=chain_graph("neg", CHAIN, CHAIN_XS.tolist()), rows=ROWS)


def check_chain_stream(stub) -> None:
    """The chain stream answers, right (closed forms: ``resilience.check_chain_stream``)."""
    resilience.check_chain_stream(stub, CHAIN, CHAIN_XS)


def _check_long_chain_stream(stub) -> None:
    """A chain of LONG_CHAIN negations of x = 0.5, one row: a small request whose plan is
    compiled on a thread. Node k is 0.5 (-1)^k, its gradient (-1)^(LONG_CHAIN - k)."""
    graph = chain_graph("neg", LONG_CHAIN, [0.5])
    signs = np.where(np.arange(LONG_CHAIN + 1) % 2, -1.0, 1.0)
    seen = np.zeros(LONG_CHAIN + 1, dtype=int)
    for chunk in stub.EvaluateStream(pb.EvaluateRequest(graph=graph), timeout=6 * HANG_S):
        ids = np.array(chunk.node_ids)
        np.testing.assert_array_equal(chunk.values, 0.5 * signs[ids])
        np.testing.assert_array_equal(chunk.grads, signs[ids] * (-1.0) ** LONG_CHAIN)
        seen[ids] += 1
    assert (seen == 1).all()


@pytest.mark.parametrize(
    ("check_stream", "budget_mib"), [(check_chain_stream, 256), (_check_long_chain_stream, 40)]
)
def test_streams_queued_for_the_only_thread_do_not_hold_the_budget(
    tmp_path, check_stream, budget_mib
):
    """One thread, busy with a call that naps longer than the budget wait. Six large
    streams queue for it, more than the calls' budget could hold evaluating at once. They
    wait holding only their requests, and once the thread is free each takes its memory
    in turn: all six succeed, right. (Before, the chains over many rows took their
    evaluation's memory before queueing, the long chains their compilation's: the first
    three chains held 107 of the 128 MiB while queued, the first four long chains 19.6 of
    20, and the others were refused RESOURCE_EXHAUSTED after their 5 s budget wait: "the
    call needs an estimated 35.7 MiB ... stayed in use by other calls".)"""
    metrics_port = free_port()
    naps = Naps(tmp_path)
    flags = ("--threads", "1", "--max-memory-mb", str(budget_mib))
    with (
        nap_server(tmp_path, *flags, "--metrics-port", str(metrics_port)) as served,
        channel_to(served.port) as channel,
    ):
        stub = stub_on(channel)
        napping = nap_request()
        napping.rows = 2  # two rows: not the small-call path, so it takes the one thread
        napping.graph.leaf_values[:] = [0.5, 0.25]
        busy = stub.Evaluate.future(napping, timeout=6 * HANG_S)
        assert wait_until(lambda: naps.count() == 1, HANG_S), "the nap never started"
        failures = []

        def stream() -> None:
            try:
                check_stream(stub)
            except grpc.RpcError as error:
                failures.append((error.code(), error.details()))

        streams = [threading.Thread(target=stream) for _ in range(STREAMS)]
        for thread in streams:
            thread.start()

        def waiting(text: str, metric: str, state: str) -> float:
            return sample(
                text, f"gradserve_memory_budget_{metric}", method="EvaluateStream", state=state
            )

        def all_waiting() -> bool:
            text = scrape(metrics_port)
            states = ("waiting_for_compute_slot", "waiting_for_memory")
            return sum(waiting(text, "holding_calls", state) for state in states) == STREAMS

        assert wait_until(all_waiting, HANG_S), scrape(metrics_port)
        held = waiting(scrape(metrics_port), "held_bytes", "waiting_for_compute_slot")
        print(f"{STREAMS} queued streams hold {held / 2**20:.1f} MiB")
        time.sleep(BUDGET_WAIT_S + 1)  # past the budget wait, the thread still busy
        naps.release.touch()
        busy.result(timeout=HANG_S)
        for thread in streams:
            thread.join(6 * HANG_S)
        assert failures == []
        assert held < budget_mib / 2 * 2**20  # their requests alone: all six fit, queued
        assert wait_until(
            lambda: sample(scrape(metrics_port), "gradserve_memory_budget_used_bytes") == 0,
            HANG_S,
        )
