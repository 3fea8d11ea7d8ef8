"""Calls queued for the evaluation threads hold none of what computing needs (issue 19).

In issue 19's soak, up to 21 large streams waited for the server's 4 threads while each
already held its whole evaluation's charge: 396 of the calls' 512 MiB, held by calls that
were not computing. With the abusers' replies holding the rest, another client's large
stream was refused after its budget wait. A call now takes its evaluation's memory once
it has a thread (``CallScope.compute``)."""

import threading
import time

import grpc
import numpy as np
from hardening import wait_until
from metered import sample, scrape
from resilience import HANG_S, Naps, chain_graph, channel_to, nap_request, nap_server, stub_on

from bench.ports import free_port
from gradserve.v1 import gradserve_pb2 as pb

# The calls' part of a 256 MiB budget (a quarter each to plans and arriving requests) is
# 128 MiB; each stream's evaluation is charged 35.7 MiB, so three of them fill it.
BUDGET_MIB = 256
CALLS_MIB = BUDGET_MIB // 2
CHAIN, ROWS = 60, 8_000  # y_k = -y_(k-1) over ROWS rows
STREAMS = 6
BUDGET_WAIT_S = 5  # admission.DEFAULT_WAIT_S: how long a call may wait for memory


def _check_chain_stream(stub) -> None:
    """The stream answers, right: node k of the chain of negations is (-1)^k x and its
    gradient (d y_last / d y_k) is (-1)^(CHAIN - k), every node and row exactly once."""
    xs = np.arange(ROWS) / ROWS - 0.5
    request = pb.EvaluateRequest(graph=chain_graph("neg", CHAIN, xs.tolist()), rows=ROWS)
    seen = np.zeros((CHAIN + 1, ROWS), dtype=int)
    for chunk in stub.EvaluateStream(request, timeout=6 * HANG_S):
        ids, rows, first = np.array(chunk.node_ids), chunk.rows or ROWS, chunk.first_row
        values = np.array(chunk.values).reshape(rows, len(ids))
        grads = np.array(chunk.grads).reshape(rows, len(ids))
        signs = np.where(ids % 2, -1.0, 1.0)
        np.testing.assert_array_equal(values, np.outer(xs[first : first + rows], signs))
        np.testing.assert_array_equal(grads, np.broadcast_to(signs * (-1.0) ** CHAIN, grads.shape))
        seen[ids, first : first + rows] += 1
    assert (seen == 1).all()


def test_streams_queued_for_the_only_thread_do_not_hold_the_budget(tmp_path):
    """One thread, busy with a call that naps longer than the budget wait. Six large
    streams queue for it, more than the calls' budget could hold evaluating at once. They
    wait holding only their requests, and once the thread is free each takes its memory
    in turn: all six succeed, right. (Before, the first three held 107 of the 128 MiB
    while queued, and the other three were refused RESOURCE_EXHAUSTED after their 5 s
    budget wait: "the call needs an estimated 35.7 MiB ... stayed in use by other calls".)"""
    metrics_port = free_port()
    naps = Naps(tmp_path)
    flags = ("--threads", "1", "--max-memory-mb", str(BUDGET_MIB))
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
                _check_chain_stream(stub)
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
        assert held < CALLS_MIB * 2**20 / 4  # their requests alone (2.5 MiB each)
        assert wait_until(
            lambda: sample(scrape(metrics_port), "gradserve_memory_budget_used_bytes") == 0,
            HANG_S,
        )
