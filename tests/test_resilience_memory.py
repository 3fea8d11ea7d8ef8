"""Tiny requests, huge arrays (issue 11, finding 3): `rows x nodes` is bounded by the
server's memory budget, never by the machine's memory; a reply that cannot fit a message is
refused before any work, and EvaluateStream's chunks always fit."""

import re

import grpc
import numpy as np
import pytest
from hardening import violations
from resilience import (
    EVALUATE_STREAM,
    HANG_S,
    MARGIN_MIB,
    MESSAGE_LIMIT,
    MemoryWatch,
    chain_graph,
    channel_to,
    idle_mib,
    repeated_nodes,
    serve,
    stub_on,
)

from gradserve.v1 import gradserve_pb2 as pb

BUDGET_MIB = 256


def _served_within_budget():
    return serve(settings={"max-memory-mb": BUDGET_MIB})


def _names_limit_and_estimate(error: grpc.RpcError) -> None:
    """RESOURCE_EXHAUSTED with a BadRequest that names the budget and the call's estimate."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    found = violations(error)
    assert found, "no BadRequest field violations"
    text = " ".join(description for _, description in found)
    assert str(BUDGET_MIB) in text or str(BUDGET_MIB * 2**20) in text, found
    numbers = {n.replace(",", "").replace("_", "") for n in re.findall(r"\d[\d,_.]*\d|\d", text)}
    assert numbers - {str(BUDGET_MIB), str(BUDGET_MIB * 2**20)}, f"no estimate in {found}"


def test_a_long_chain_over_many_rows_runs_in_the_budget_or_is_refused():
    """1 leaf and 1,000 `neg` nodes each reading the previous, 100,000 rows, node 0 asked
    for: either right ((-1)^1000 x = x, so node 0's gradient is 1) or RESOURCE_EXHAUSTED
    with details; never INTERNAL, and the server's peak stays within its budget."""
    rows = 100_000
    leaves = 1 + np.arange(rows) / rows
    request = pb.EvaluateRequest(
        graph=chain_graph("neg", 1_000, leaves), nodes=[0], rows=rows, selection=pb.SELECTION_NODES
    )
    with _served_within_budget() as served, channel_to(served.port) as channel:
        with MemoryWatch(served, idle_mib(served) + BUDGET_MIB + MARGIN_MIB) as watch:
            try:
                reply = stub_on(channel).Evaluate(request, timeout=6 * HANG_S)
            except grpc.RpcError as error:
                _names_limit_and_estimate(error)
            else:
                assert reply.rows == rows and list(reply.node_ids) == [0]
                np.testing.assert_array_equal(np.array(reply.values), leaves)
                np.testing.assert_array_equal(np.array(reply.grads), np.ones(rows))
        watch.check()


def test_an_evaluate_reply_that_cannot_fit_a_message_is_refused_before_evaluation():
    """Node 0 of a 2-node graph asked for 200,000 times over 1,000 rows: a 0.2 MB request
    for a 3.2 GB reply. Evaluate refuses it (RESOURCE_EXHAUSTED with details, pointing to
    EvaluateStream) without computing it: the server's memory stays within its budget."""
    with _served_within_budget() as served, channel_to(served.port) as channel:
        with MemoryWatch(served, idle_mib(served) + BUDGET_MIB + MARGIN_MIB) as watch:
            try:
                stub_on(channel).Evaluate(repeated_nodes(200_000, rows=1_000), timeout=HANG_S)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                assert "EvaluateStream" in error.details(), error.details()
                assert violations(error), "no BadRequest details"
            else:
                raise AssertionError("a 3.2 GB reply was sent as one message")
        watch.check()


def test_a_big_stream_of_repeated_nodes_stays_within_the_budget():
    """EvaluateStream of node 0 selected 20,000 times over 1,000 rows (320 MB of results):
    it succeeds, every chunk fits the message limit, the results are right (node 0 is the
    leaf, its gradient through y = -x is -1) and the server's peak stays within budget."""
    nodes, rows = 20_000, 1_000
    request = repeated_nodes(nodes, rows=rows)
    leaves_sum = float(np.sum(request.graph.leaf_values))
    with _served_within_budget() as served, channel_to(served.port) as channel:
        with MemoryWatch(served, idle_mib(served) + BUDGET_MIB + MARGIN_MIB) as watch:
            chunks = channel.unary_stream(EVALUATE_STREAM)(
                request.SerializeToString(), timeout=6 * HANG_S
            )
            results, values_sum, largest = 0, 0.0, 0
            for raw in chunks:
                largest = max(largest, len(raw))
                chunk = pb.GradientChunk.FromString(raw)
                values, grads = np.array(chunk.values), np.array(chunk.grads)
                assert set(chunk.node_ids) == {0} and np.all(grads == -1.0)
                results += values.size
                values_sum += float(values.sum())
        watch.check()
    assert largest <= MESSAGE_LIMIT
    assert results == nodes * rows
    assert values_sum == pytest.approx(nodes * leaves_sum, rel=1e-9)
