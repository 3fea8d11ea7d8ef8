"""A faulty op plugin fails its call with INTERNAL naming the op and node, its own error text
stays in the server log, and the server keeps serving."""

import grpc
import numpy as np
import pytest
from graphs import GraphBuilder, notebook_first_example
from servers import serving

from gradserve.ops import Op
from gradserve.server.registry import LoadedOp
from gradserve.v1 import gradserve_pb2 as pb


def _raise(*args):
    raise RuntimeError("secret plugin detail")


def _identity_backward(g, y, x):
    return (g,)


# case -> ((forward, backward) of a unary op, what the client is told)
FAULTS = {
    "forward raises": ((_raise, _identity_backward), "failed in forward"),
    "backward raises": ((np.negative, _raise), "failed in backward"),
    "forward shape": (
        (lambda x: np.concatenate([x, x]), _identity_backward),
        "forward returned shape (2, 1), expected (1, 1)",
    ),
    "forward dtype": (
        (lambda x: x.astype(np.complex128), _identity_backward),
        "forward returned dtype complex128",
    ),
    "forward not an array": ((lambda x: 1.0, _identity_backward), "forward returned float"),
    "backward shape": (
        (np.negative, lambda g, y, x: (g[:0],)),
        "backward returned shape (0, 1), expected (1, 1)",
    ),
    "backward dtype": (
        (np.negative, lambda g, y, x: (g.astype(str),)),
        "backward returned dtype <U",
    ),
    "backward count": (
        (np.negative, lambda g, y, x: (g, g)),
        "backward must return 1 gradient(s)",
    ),
}


@pytest.fixture(scope="module")
def stub_with_faults(registry):
    """A server with the standard ops and one faulty op per case, named after the case."""
    faulty = {}
    for i, ((forward, backward), _) in enumerate(FAULTS.values()):
        name = f"bad{i}"
        faulty[name] = LoadedOp(Op(name, 1, forward, backward), name, "faulty", "0")
    with serving({**registry, **faulty}) as stub:
        yield stub


@pytest.mark.parametrize("case", FAULTS)
def test_a_faulty_op_is_internal_and_the_server_keeps_serving(stub_with_faults, case, caplog):
    name = f"bad{list(FAULTS).index(case)}"
    problem = FAULTS[case][1]
    g = GraphBuilder()
    x = g.leaf(2.0)
    g.op("mul", g.op(name, g.op("tanh", x)), x)  # the faulty op is node 2
    with pytest.raises(grpc.RpcError) as caught:
        stub_with_faults.Evaluate(pb.EvaluateRequest(graph=g.proto()))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details()
    assert f"node 2: op '{name}' {problem}" in details
    assert "secret" not in details and "Traceback" not in details
    if "raises" in case:
        assert "secret plugin detail" in caplog.text
    example, _ = notebook_first_example()
    assert stub_with_faults.Evaluate(pb.EvaluateRequest(graph=example.proto())).values[-1] == 80


def test_input_outside_the_domain_is_invalid_argument_naming_node_and_op(stub):
    g = GraphBuilder()
    g.op("log", g.op("neg", g.leaf(3.0)))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(pb.EvaluateRequest(graph=g.proto()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node 2: op 'log' is not defined at (-3.0)" in caught.value.details()
