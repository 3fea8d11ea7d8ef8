"""Work stops when nobody waits (issue 11, finding 5): compiling, evaluating and encoding
stop soon after the call's deadline passes or its client cancels, and the call log says how
the call ended for the client, never OK for a call the client saw fail."""

import time

import grpc
import numpy as np
import pytest
from hardening import wait_until
from resilience import (
    HANG_S,
    Naps,
    call_lines,
    chain_graph,
    channel_to,
    cpu_seconds,
    line_time,
    nap_server,
    repeated_nodes,
    rpc_code,
    serve,
    stub_on,
    wait_for_call_line,
)

from gradserve.v1 import gradserve_pb2 as pb

IDLE_WINDOW_S = 1.0  # how long the server is watched for leftover work
IDLE_CPU_S = 0.5  # the most CPU time it may use in that window once the call has ended


@pytest.fixture(scope="module")
def served():
    # Room for a 2,000,000-node chain beside the plan cache's and arriving requests' shares.
    with serve("--threads", "2", "--max-memory-mb", "2048") as server:
        yield server


def _cpu_used_over(pid: int, seconds: float) -> float:
    """CPU seconds the process uses in the next ``seconds`` (a measurement, not a wait for
    anything: a server with no call in flight uses next to none)."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def _wide_sums(leaves: int, sums: int) -> pb.Graph:
    """``leaves`` leaves and ``sums`` sum nodes that each read every leaf: ~57 MB for
    1,000,000 x 16, and seconds of validation and scheduling for a server seeing it first."""
    return pb.Graph(
        op_names=["sum"],
        node_ops=[0] * leaves + [1] * sums,
        input_counts=[0] * leaves + [leaves] * sums,
        input_ids=np.tile(np.arange(leaves, dtype=np.uint32), sums).tolist(),
        leaf_values=np.random.default_rng(0).uniform(-1, 1, leaves).tolist(),
    )


def test_a_fresh_huge_graph_past_its_deadline_stops_the_server_work(tmp_path):
    """A fresh 57 MB graph whose sums feed a chain of three `nap` nodes (an op that counts
    its calls and waits for a file), with a 2 s deadline: the client gets DEADLINE_EXCEEDED,
    the call log says DEADLINE_EXCEEDED, and no op runs once the call has ended.

    The deadline passes while the server compiles the graph or while the first nap waits;
    the nap is then released. On a server with one evaluation thread a probe call runs only
    after the huge call's step has ended, so the nap count after the probe counts every op
    call the huge call made: the same as when its call ended, where a step that ran on past
    its deadline would have called the next naps."""
    leaves, sums, naps = 1_000_000, 16, 3
    graph = _wide_sums(leaves, sums)
    graph.op_names.append("nap")
    for k in range(naps):
        graph.node_ops.append(2)
        graph.input_counts.append(1)
        graph.input_ids.append(leaves + sums - 1 + k)  # the last sum, then each nap
    request = pb.EvaluateRequest(graph=graph, nodes=[leaves])
    calls = Naps(tmp_path)
    with (
        nap_server(tmp_path, "--threads", "1", "--max-memory-mb", "2048") as server,
        channel_to(server.port) as channel,
    ):
        stub = stub_on(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Evaluate(request, timeout=2.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: call_lines(server, "Evaluate"), HANG_S), server.log
        [line] = call_lines(server, "Evaluate")
        assert line["status"] == "DEADLINE_EXCEEDED", line.group(0)
        naps_when_ended = calls.count()
        print(f"{naps_when_ended} nap call(s) when the call ended")
        calls.release.touch()
        # Two rows: not the small-call path, so the probe's evaluation takes the one thread.
        probe = stub.Evaluate(repeated_nodes(1, rows=2), timeout=6 * HANG_S)
        assert list(probe.values) == [0.5, 1.5]
        assert calls.count() == naps_when_ended <= 1, "ops ran after the call had ended"


def test_a_cancelled_long_chain_stops_and_is_logged_cancelled(served):
    """A 100,000-node chain of tanh over 200 rows (seconds of work), cancelled once the
    server is busy with it: logged CANCELLED soon after the cancel, and the server idles."""
    length, rows = 100_000, 200
    request = pb.EvaluateRequest(
        graph=chain_graph("tanh", length, np.linspace(-1, 1, rows)), rows=rows, nodes=[0]
    )
    pid = served.process.pid
    with channel_to(served.port) as channel:
        before = cpu_seconds(pid)
        call = stub_on(channel).Evaluate.future(request, timeout=6 * HANG_S)
        assert wait_until(lambda: cpu_seconds(pid) > before + 0.5, HANG_S), "never got busy"
        assert call.cancel()
        cancelled_at = time.time()
        line = wait_for_call_line(served, "Evaluate", length + 1)
        gap = line_time(line) - cancelled_at
        print(f"cancelled call logged {gap * 1e3:.0f} ms after the cancel")
        assert line["status"] == "CANCELLED", line.group(0)
        assert gap < 2.0, f"the server worked {gap:.1f} s past the cancel"
        used = _cpu_used_over(pid, IDLE_WINDOW_S)
        assert used < IDLE_CPU_S, f"{used:.2f} s of CPU in {IDLE_WINDOW_S} s after the call"


def test_the_call_log_says_what_the_client_got_when_the_deadline_passes(served):
    """A 2,000,000-node chain with a 1.2 s deadline (the client sees DEADLINE_EXCEEDED), then
    its cached plan with deadlines that fall during its evaluation (about 1 s here) and one
    well past it: each call's log
    line says what its client got, never `status=OK` for a call the client saw fail."""
    length = 2_000_000
    fresh = pb.EvaluateRequest(graph=chain_graph("neg", length, [0.5]), nodes=[0])
    with channel_to(served.port) as channel:
        stub = stub_on(channel)
        client_saw = [rpc_code(lambda: stub.Evaluate(fresh, timeout=1.2))]
        assert client_saw == [grpc.StatusCode.DEADLINE_EXCEEDED]
        digest = stub.Evaluate(fresh, timeout=6 * HANG_S).plan_digest
        client_saw.append(grpc.StatusCode.OK)
        cached = pb.EvaluateRequest(
            plan_digest=digest, graph=pb.Graph(leaf_values=[0.25]), nodes=[0]
        )
        for timeout in (0.3, 0.6, 0.9, 1.2, 6 * HANG_S):
            _wait_for_lines(served, length + 1, len(client_saw))  # one call at a time
            client_saw.append(rpc_code(lambda t=timeout: stub.Evaluate(cached, timeout=t)))
        lines = _wait_for_lines(served, length + 1, len(client_saw))
    print("client saw", [code.name for code in client_saw])
    assert [line["status"] for line in lines] == [code.name for code in client_saw], served.log


def _wait_for_lines(served, nodes: int, count: int) -> list:
    """The first ``count`` Evaluate log lines for graphs of ``nodes`` nodes."""

    def lines():
        return [m for m in call_lines(served, "Evaluate") if int(m["nodes"]) == nodes]

    assert wait_until(lambda: len(lines()) >= count, 6 * HANG_S), served.log
    return lines()[:count]
