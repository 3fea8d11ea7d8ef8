"""The conformance suite (conformance/cases.json) from Python, and its oracle's reproducibility.

This runner speaks the protocol through the generated stubs on the SDK's channel
(``gradserve.client.connect``), so it checks the wire contract itself: statuses, BadRequest
fields, digests, chunking. The cases' successful Evaluate calls also run through the SDK's
``Value`` API and ``Client.evaluate``. The Go and Node runners (tests/test_go_client.py,
tests/test_node_client.py) check their clients against the same cases.
"""

import itertools
import math
import queue
import re
import subprocess
import sys

import grpc
import pytest
from conformance_suite import CASES_FILE, CONFORMANCE, load
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gradserve.client import Client, Value, connect
from gradserve.client.train_stream import StreamedStatus
from gradserve.v1 import gradserve_pb2 as pb

SUITE = load()
TOLERANCE = SUITE["tolerance"]


def test_the_cases_are_what_the_oracle_writes(tmp_path):
    """cases.json is conformance/oracle.py's output, byte for byte (plain Python, no server)."""
    script = (CONFORMANCE / "oracle.py").read_text()
    copy = tmp_path / "oracle.py"
    copy.write_text(script)
    subprocess.run([sys.executable, str(copy)], check=True, cwd=tmp_path)
    assert (tmp_path / "cases.json").read_bytes() == CASES_FILE.read_bytes(), (
        "conformance/cases.json is stale: run `python3 conformance/oracle.py` and commit"
    )


def graph_of(spec: dict) -> pb.Graph:
    """The case's graph: raw columns, a node list, or a chain rule expanded."""
    if "raw" in spec:
        return pb.Graph(**spec["raw"])
    nodes = spec.get("nodes", [])
    if "chain" in spec:
        chain = spec["chain"]
        nodes = chain["leaves"] + chain["steps"] * chain["repeat"]
    columns = {name: [] for name in ("node_ops", "input_counts", "input_ids", "leaf_values")}
    op_names: dict[str, int] = {}
    for node_id, node in enumerate(nodes):
        if "leaf" in node:
            columns["node_ops"].append(0)
            columns["input_counts"].append(0)
            columns["leaf_values"].append(node["leaf"])
            continue
        columns["node_ops"].append(op_names.setdefault(node["op"], len(op_names) + 1))
        columns["input_counts"].append(len(node["inputs"]))
        columns["input_ids"].extend(node_id + i if i < 0 else i for i in node["inputs"])
    labels = [node.get("label", "") for node in nodes]
    return pb.Graph(op_names=list(op_names), labels=labels if any(labels) else [], **columns)


def request_of(graph: pb.Graph, spec: dict, previous_digest: bytes) -> pb.EvaluateRequest:
    request = pb.EvaluateRequest(
        graph=graph,
        outputs=spec.get("outputs", []),
        seeds=spec.get("seeds", []),
        selection=pb.Selection.Value(spec.get("selection", "SELECTION_UNSPECIFIED")),
        nodes=spec.get("nodes", []),
        chunk_size=spec.get("chunk_size", 0),
        allow_non_finite=spec.get("allow_non_finite", False),
    )
    digest = previous_digest if spec.get("plan") == "previous" else None
    if "plan_digest" in spec:
        digest = bytes.fromhex(spec["plan_digest"])
    if digest is not None:
        request.plan_digest = digest
        request.graph.CopyFrom(pb.Graph(leaf_values=graph.leaf_values))
    if "leaf_values" in spec:
        request.graph.leaf_values[:] = spec["leaf_values"]
    if "rows" in spec:
        request.graph.leaf_values[:] = [v for row in spec["rows"] for v in row]
        request.rows = len(spec["rows"])
    return request


def assert_close(got, want, what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} results, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        limit = TOLERANCE["absolute"] + TOLERANCE["relative"] * abs(w)
        assert abs(g - w) <= limit, f"{what}[{i}]: {g} != {w}"


def check_results(node_ids, values, grads, chunks, digest, rows, expect: dict) -> None:
    if "node_ids" in expect:
        assert list(node_ids) == expect["node_ids"]
        assert_close(values, expect["values"], "values")
        assert_close(grads, expect["grads"], "grads")
    if "samples" in expect:
        position = {node: i for i, node in enumerate(node_ids)}
        picks = [position[n] for n in expect["samples"]["node_ids"]]
        assert_close([values[i] for i in picks], expect["samples"]["values"], "sample values")
        assert_close([grads[i] for i in picks], expect["samples"]["grads"], "sample grads")
        assert_close([math.fsum(values)], [expect["value_sum"]], "value sum")
        assert_close([math.fsum(grads)], [expect["grad_sum"]], "grad sum")
    if "total_nodes" in expect:
        assert len(node_ids) == expect["total_nodes"]
    if "chunks" in expect:
        assert chunks == expect["chunks"]
    if "rows" in expect:
        assert rows == expect["rows"]
    if "plan_digest_length" in expect:
        assert len(digest) == expect["plan_digest_length"]


def check_error(error: grpc.RpcError, expect: dict) -> None:
    assert error.code() == grpc.StatusCode[expect["status"]]
    message = error.details() or ""
    for text in expect["message_contains"]:
        assert text in message, f"{text!r} not in {message!r}"
    if "node" in expect:
        assert re.match(rf"node {expect['node']}\b", message), message
    if "field" in expect:
        status = rpc_status.from_call(error)
        assert status is not None, "no google.rpc.Status details"
        bad_request = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad_request)
        assert bad_request.field_violations[0].field == expect["field"]


class TrainStreams:
    """Train streams on one stub, one per set of metadata (a token is checked when a stream
    opens), each reused for every Evaluate request sent with that metadata."""

    def __init__(self, stub) -> None:
        self.stub = stub
        self.open: dict[tuple, tuple[queue.SimpleQueue, object]] = {}
        self.ids = itertools.count()

    def evaluate(self, request: pb.EvaluateRequest, metadata, timeout: float):
        """Evaluate's reply as a stream message; a failure raises as Evaluate's would."""
        if metadata not in self.open:
            outbox = queue.SimpleQueue()
            self.open[metadata] = outbox, self.stub.Train(iter(outbox.get, None), metadata=metadata)
        outbox, answers = self.open[metadata]
        request_id = next(self.ids)
        outbox.put(pb.TrainRequest(id=request_id, request=request, timeout_ms=int(timeout * 1e3)))
        answer = next(answers)
        assert answer.id == request_id
        if answer.status:
            raise StreamedStatus(status_pb2.Status.FromString(answer.status))
        return answer.response

    def close(self) -> None:
        for outbox, answers in self.open.values():
            outbox.put(None)
            answers.cancel()


def run_call(
    stub,
    graph: pb.Graph,
    call: dict,
    token: str,
    previous: list[bytes],
    train: TrainStreams | None = None,
) -> None:
    """One call of a case; with ``train``, an Evaluate call is a message on a Train stream."""
    spec, expect = call["request"], call["expect"]
    metadata = (("authorization", f"Bearer {spec.get('token', token)}"),)
    if spec.get("token") == "":
        metadata = ()
    options = {"metadata": metadata, "timeout": spec.get("deadline_ms", 60_000) / 1000}
    if call["rpc"] == "ListOps":
        names = [op.name for op in stub.ListOps(pb.ListOpsRequest(), **options).ops]
        assert names == sorted(names)
        listed = {op.name: op for op in stub.ListOps(pb.ListOpsRequest(), **options).ops}
        for want in expect["ops"]:
            op = listed[want["name"]]
            assert (op.arity, op.variadic) == (want["arity"], want["variadic"])
        return
    request = request_of(graph, spec, previous[-1] if previous else b"")
    try:
        if call["rpc"] == "Evaluate" and train is not None:
            messages = [train.evaluate(request, **options)]
        elif call["rpc"] == "Evaluate":
            response = stub.Evaluate(request, **options)
            messages = [response]
        else:
            stream = stub.EvaluateStream(request, **options)
            messages = []
            for message in stream:
                messages.append(message)
                if len(messages) == spec.get("cancel_after_chunks"):
                    stream.cancel()
    except grpc.RpcError as error:
        assert expect["status"] != "OK", f"{error.code()}: {error.details()}"
        check_error(error, expect)
        return
    assert expect["status"] == "OK", f"expected {expect['status']}, the call succeeded"
    ids = [n for m in messages for n in m.node_ids]
    rows = messages[0].rows or 1
    values = [v for m in messages for v in m.values]
    grads = [g for m in messages for g in m.grads]
    if call["rpc"] == "EvaluateStream":
        assert {m.total_nodes for m in messages} == {len(ids)}
    check_results(ids, values, grads, len(messages), messages[0].plan_digest, rows, expect)
    previous.append(messages[0].plan_digest)


@pytest.mark.parametrize("case", SUITE["cases"], ids=[c["name"] for c in SUITE["cases"]])
def test_conformance(conformance_target, unused_target, case):
    target, token = conformance_target
    graph = graph_of(case["graph"]) if "graph" in case else None
    channel, stub = connect(target)
    previous: list[bytes] = []
    try:
        for call in case["calls"]:
            if call["request"].get("target") == "unreachable":
                with connect(unused_target)[0] as nowhere:
                    run_call(type(stub)(nowhere), graph, call, token, previous)
            else:
                run_call(stub, graph, call, token, previous)
    finally:
        channel.close()


TRAIN_CASES = [c for c in SUITE["cases"] if any(k["rpc"] == "Evaluate" for k in c["calls"])]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c["name"] for c in TRAIN_CASES])
def test_conformance_over_the_train_stream(conformance_target, unused_target, case):
    """The case's Evaluate calls as messages on Train streams (one per token), answered with
    the same results or statuses; the case's other calls as they are."""
    target, token = conformance_target
    graph = graph_of(case["graph"]) if "graph" in case else None
    channel, stub = connect(target)
    nowhere, _ = connect(unused_target)
    streams = {"here": TrainStreams(stub), "nowhere": TrainStreams(type(stub)(nowhere))}
    previous: list[bytes] = []
    try:
        for call in case["calls"]:
            where = "nowhere" if call["request"].get("target") == "unreachable" else "here"
            train = streams[where]
            run_call(train.stub, graph, call, token, previous, train)
    finally:
        for train in streams.values():
            train.close()
        channel.close()
        nowhere.close()


def leaves_data(leaves: list[Value]) -> list[float]:
    return [leaf.data for leaf in leaves]


def sdk_calls(case: dict) -> list[dict]:
    """The case's successful Evaluate calls on a node-list graph, which the SDK can make."""
    if "nodes" not in case.get("graph", {}):
        return []
    return [
        call
        for call in case["calls"]
        if call["rpc"] == "Evaluate"
        and call["expect"]["status"] == "OK"
        and not {"token", "plan_digest", "target"} & call["request"].keys()
    ]


SDK_CASES = [case for case in SUITE["cases"] if sdk_calls(case)]


@pytest.mark.parametrize("case", SDK_CASES, ids=[c["name"] for c in SDK_CASES])
def test_conformance_through_the_sdk(conformance_target, case):
    """The graph as micrograd-style Values; each call's selected nodes as ``wrt``."""
    target, token = conformance_target
    values: list[Value] = []
    for node in case["graph"]["nodes"]:
        if "leaf" in node:
            values.append(Value(node["leaf"], node.get("label", "")))
        else:
            first, *rest = (values[i] for i in node["inputs"])
            values.append(first.apply(node["op"], *rest))
    leaves = [v for v, node in zip(values, case["graph"]["nodes"], strict=True) if "leaf" in node]
    metadata = [("authorization", f"Bearer {token}")]
    with Client(target, timeout=60, metadata=metadata) as client:
        for call in sdk_calls(case):
            spec, expect = call["request"], call["expect"]
            for leaf, value in zip(
                leaves, spec.get("leaf_values", leaves_data(leaves)), strict=True
            ):
                leaf.data = value
            outputs = [values[i] for i in spec.get("outputs", [len(values) - 1])]
            batch = None
            if "rows" in spec:
                columns = zip(*spec["rows"], strict=True)
                batch = dict(zip(leaves, columns, strict=True))
            result = client.evaluate(
                outputs,
                wrt=[values[i] for i in expect["node_ids"]],
                seeds=spec.get("seeds"),
                batch=batch,
            )
            assert_close(result.values.ravel().tolist(), expect["values"], "values")
            assert_close(result.grads.ravel().tolist(), expect["grads"], "grads")
