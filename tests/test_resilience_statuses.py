"""Truthful statuses and bounded text (issue 11, finding 6): client strings quoted back are
cut, oversized input is INVALID_ARGUMENT with details, stream chunks always fit a message,
refused calls are refused at once with details, and the call log says what the client got."""

import signal
from concurrent import futures

import grpc
import numpy as np
import pytest
from graphs import GraphBuilder
from grpc_status import rpc_status
from hardening import violations, wait_until
from resilience import (
    EVALUATE_STREAM,
    HANG_S,
    MESSAGE_LIMIT,
    Naps,
    call_lines,
    channel_to,
    nap_request,
    nap_server,
    rpc_code,
    serve,
    stub_on,
)

from gradserve.v1 import gradserve_pb2 as pb

TEXT_LIMIT = 4096  # the most bytes a status message or one detail may take

# Text ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_server():
    with serve() as served, channel_to(served.port) as channel:
        yield served, stub_on(channel)


def _mentions_length(text: str, length: int) -> bool:
    return str(length) in text or f"{length:,}" in text or f"{length:_}" in text


def _bounded_error(error: grpc.RpcError) -> str:
    """Check INVALID_ARGUMENT with BadRequest details, every text under TEXT_LIMIT; the
    message and the details' descriptions, joined."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details()[:200])
    assert len(error.details().encode()) < TEXT_LIMIT, len(error.details())
    status = rpc_status.from_call(error)
    assert status is not None and status.details, "no google.rpc.Status details"
    assert all(detail.ByteSize() < TEXT_LIMIT for detail in status.details)
    found = violations(error)
    assert found
    return " ".join([error.details(), *(f"{field} {text}" for field, text in found)])


def _quoted_and_cut(text: str, marker: str, length: int) -> None:
    """The client string (which starts with ``marker``) is quoted cut: an ellipsis and its
    full length, not the whole string."""
    assert marker in text, text
    assert "…" in text and _mentions_length(text, length), text


def test_a_huge_op_name_is_invalid_argument_quoted_cut(plain_server):
    _, stub = plain_server
    name = "op-name-" + "x" * (2**20 - 8)  # 1 MiB
    graph = pb.Graph(
        op_names=[name], node_ops=[0, 1], input_counts=[0, 1], input_ids=[0], leaf_values=[0.5]
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(graph=graph), timeout=HANG_S)
    _quoted_and_cut(_bounded_error(caught.value), "op-name-", len(name))


def test_huge_labels_are_quoted_cut_in_an_error(plain_server):
    """100 KB labels on a graph whose second leaf has no value: the error names that leaf
    by its label, cut."""
    _, stub = plain_server
    g = GraphBuilder()
    label = "label-" + "y" * (100_000 - 6)
    g.op("add", g.leaf(1.0, label=label), g.leaf(2.0, label=label), label=label)
    graph = g.proto()
    del graph.leaf_values[1:]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(graph=graph), timeout=HANG_S)
    _quoted_and_cut(_bounded_error(caught.value), "label-", len(label))


def test_a_huge_plan_digest_is_invalid_argument_not_not_found(plain_server):
    _, stub = plain_server
    digest = b"\x01" * 2**20
    request = pb.EvaluateRequest(plan_digest=digest, graph=pb.Graph(leaf_values=[0.5]))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(request, timeout=HANG_S)
    text = _bounded_error(caught.value)
    assert _mentions_length(text, len(digest)), text


def test_an_unknown_well_formed_digest_is_not_found(plain_server):
    _, stub = plain_server
    request = pb.EvaluateRequest(plan_digest=b"\x02" * 16, graph=pb.Graph(leaf_values=[0.5]))
    assert rpc_code(lambda: stub.Evaluate(request, timeout=HANG_S)) == grpc.StatusCode.NOT_FOUND


def test_stream_chunks_fit_a_message_whatever_the_rows(plain_server):
    """One leaf over 4,500,000 rows: 72 MB of values and gradients, more than one message
    holds. Every chunk fits the message limit, and together they hold every row, right."""
    served, _ = plain_server
    rows = 4_500_000
    leaves = np.linspace(-1, 1, rows)
    request = pb.EvaluateRequest(graph=pb.Graph(node_ops=[0], input_counts=[0]), rows=rows)
    request.graph.leaf_values.extend(leaves.tolist())
    with channel_to(served.port) as channel:  # a client that accepts any size, to measure
        chunks = channel.unary_stream(EVALUATE_STREAM)(
            request.SerializeToString(), timeout=6 * HANG_S
        )
        sizes, values, grads = [], [], []
        for raw in chunks:
            sizes.append(len(raw))
            chunk = pb.GradientChunk.FromString(raw)
            values.append(np.array(chunk.values))
            grads.append(np.array(chunk.grads))
    assert max(sizes) <= MESSAGE_LIMIT, f"largest chunk {max(sizes):,} bytes"
    np.testing.assert_array_equal(np.concatenate(values), leaves)
    np.testing.assert_array_equal(np.concatenate(grads), np.ones(rows))


# Calls that wait -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def napping(tmp_path_factory):
    folder = tmp_path_factory.mktemp("naps")
    flags = ("--max-concurrent-calls", "4", "--max-calls-per-connection", "4", "--threads", "4")
    with nap_server(folder, *flags) as served, channel_to(served.port) as channel:
        naps = Naps(folder)
        yield served, stub_on(channel), naps
        naps.release.touch()


def test_calls_beyond_max_concurrent_calls_are_refused_at_once_with_details(napping):
    """60 napping calls against --max-concurrent-calls 4: 56 are refused RESOURCE_EXHAUSTED
    with details while the 4 admitted still nap (not queued behind them); then the 4 end OK.
    (Fewer than the 64 HTTP/2 streams a connection may open: past them grpc core itself
    refuses a stream the client sent before it had the server's settings.)"""
    _, stub, naps = napping
    naps.reset()
    calls = [stub.Evaluate.future(nap_request(), timeout=6 * HANG_S) for _ in range(60)]
    try:
        assert wait_until(lambda: sum(c.done() for c in calls) >= 56 and naps.count() == 4, HANG_S)
        assert not naps.release.exists()
        refused = [call for call in calls if call.done()]
        assert len(refused) == 56 and naps.count() == 4
        for call in refused:
            assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, call.code()
            assert "max-concurrent-calls" in call.details(), call.details()
            status = rpc_status.from_call(call)
            assert status is not None and status.details, "refused without details"
    finally:
        naps.release.touch()
    assert [call.result(timeout=HANG_S).values[1] for call in calls if call not in refused] == [
        0.5
    ] * 4


def test_an_oversized_reply_is_logged_as_the_client_saw_it(napping):
    """A reply over the message limit: the client gets RESOURCE_EXHAUSTED, and so says the
    call log (a 3-node graph, to find its line)."""
    served, stub, _ = napping
    g = GraphBuilder()
    g.op("neg", g.op("neg", g.leaf(0.5)))
    request = pb.EvaluateRequest(graph=g.proto(), nodes=[0] * 5_000_000)  # an 85 MB reply
    code = rpc_code(lambda: stub.Evaluate(request, timeout=6 * HANG_S))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert wait_until(lambda: _lines(served, nodes=3), HANG_S), served.log
    assert [line["status"] for line in _lines(served, nodes=3)] == [code.name]


def _lines(served, nodes: int) -> list:
    return [line for line in call_lines(served, "Evaluate") if int(line["nodes"]) == nodes]


def test_a_client_cancel_is_one_info_line_and_no_traceback(napping):
    """A client cancels a napping call: its log line says CANCELLED, once, and the log has
    no traceback (a 5-node graph, to find its line)."""
    served, stub, naps = napping
    naps.reset()
    call = stub.Evaluate.future(nap_request(negs=3), timeout=6 * HANG_S)
    assert wait_until(lambda: naps.count() == 1, HANG_S)
    call.cancel()
    # The nap is released only once the call has ended: released at once, under load the
    # nap could return and the reply go out before the server saw the cancel (logged OK).
    assert wait_until(lambda: _lines(served, nodes=5), HANG_S), served.log
    naps.release.touch()
    # A later call on a graph of its own, so that whatever the cancelled one logs is in.
    g = GraphBuilder()
    g.op("neg", g.op("neg", g.op("neg", g.leaf(0.5))))
    stub.Evaluate(pb.EvaluateRequest(graph=g.proto()), timeout=HANG_S)
    assert wait_until(lambda: _lines(served, nodes=4), HANG_S), served.log
    assert [line["status"] for line in _lines(served, nodes=5)] == ["CANCELLED"]
    assert "Traceback" not in served.log
    assert "Exception serializing message" not in served.log


def test_a_call_cut_off_by_the_grace_is_logged_as_the_client_saw_it(tmp_path):
    """SIGTERM with --grace 1 while a call naps: the client sees the call end (UNAVAILABLE or
    CANCELLED), and the call log says the same, not OK."""
    naps = Naps(tmp_path)
    with nap_server(tmp_path, "--grace", "1") as served, channel_to(served.port) as channel:
        with futures.ThreadPoolExecutor(1) as pool:
            call = pool.submit(
                rpc_code, lambda: stub_on(channel).Evaluate(nap_request(), timeout=30)
            )
            assert wait_until(lambda: naps.count() == 1, HANG_S)
            served.process.send_signal(signal.SIGTERM)
            code = call.result(timeout=HANG_S)
        naps.release.touch()
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), code
        served.process.wait(timeout=HANG_S)
        assert wait_until(lambda: _lines(served, nodes=2), HANG_S), served.log
        assert [line["status"] for line in _lines(served, nodes=2)] == [code.name], served.log
        assert "Traceback" not in served.log, served.log
