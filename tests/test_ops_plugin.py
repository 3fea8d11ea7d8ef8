"""The example third-party plugin, gradserve-ops-special: its ops' accuracy, and installing
and uninstalling it into this environment adds and removes its ops on a real server."""

import math
import re
import subprocess
import sys
from decimal import Decimal, getcontext
from pathlib import Path

import grpc
import numpy as np
import pytest
from graphs import GraphBuilder
from servers import Served
from test_ops_gradcheck import ops_check

from gradserve.client import connect
from gradserve.ops.gradcheck import gradcheck
from gradserve.v1 import gradserve_pb2 as pb

SPECIAL = Path(__file__).resolve().parents[1] / "ops_plugins" / "special"
DISTRIBUTION = "gradserve-ops-special"
PI = Decimal("3.14159265358979323846264338327950288419716939937510")
PHI_1 = 0.8413447460685429  # the standard normal CDF at 1 (tables, 16 digits)
PHI_MINUS_10 = 7.619853024160527e-24  # and at -10


@pytest.fixture
def special(monkeypatch):
    """The plugin's module imported from its source folder, without installing it."""
    monkeypatch.syspath_prepend(str(SPECIAL))
    import gradserve_ops_special

    return gradserve_ops_special


def erf_series(x: float) -> float:
    """erf(x) from its Taylor series in 50-digit decimals: an oracle independent of libm."""
    getcontext().prec = 50
    x = Decimal(x)
    term, total, n = x, x, 0
    while abs(term) > Decimal("1e-45"):
        n += 1
        term = -term * x * x / n
        total += term / (2 * n + 1)
    return float(2 / PI.sqrt() * total)


@pytest.mark.parametrize("x", [-3.0, -1.1, -0.3, 1e-8, 0.5, 1.0, 2.2, 3.0])
def test_erf_is_accurate(special, x):
    (value,) = special.erf.forward(np.array([x]))
    assert value == pytest.approx(erf_series(x), rel=4e-16, abs=0.0)


def test_gelu_and_logaddexp_far_out(special):
    assert special.gelu.forward(np.array([-10.0]))[0] == pytest.approx(-10 * PHI_MINUS_10)
    big = np.array([1000.0])
    assert special.logaddexp.forward(big, big)[0] == pytest.approx(1000 + math.log(2))
    y = special.logaddexp.forward(big, -big)
    assert y[0] == 1000.0
    assert special.logaddexp.backward(np.ones(1), y, big, -big) == (1.0, 0.0)


def test_erf_and_gelu_give_the_same_values_on_one_float(special):
    xs = np.concatenate([np.linspace(-30, 30, 601), [0.0, -0.0, math.inf, -math.inf, 1e300]])
    for op in (special.erf, special.gelu):
        on_floats = np.array([op.scalar(x) for x in xs.tolist()])
        with np.errstate(invalid="ignore"):  # gelu(-inf) = -inf * 0: NaN, as on floats
            np.testing.assert_array_equal(on_floats, op.forward(xs))
    assert math.isnan(special.erf.scalar(math.nan)) and special.logaddexp.scalar is None


def test_special_ops_pass_gradcheck(special):
    for op in (special.erf, special.gelu, special.logaddexp):
        result = gradcheck(op)
        assert result.ok, str(result)


def uv_pip(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "uv", "pip", *args, "--python", sys.executable]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def is_installed() -> bool:
    return uv_pip("show", DISTRIBUTION).returncode == 0


@pytest.fixture
def environment_restored():
    """Whatever the test does, leave the plugin installed or not, as it was found."""
    was_installed = is_installed()
    yield was_installed
    if was_installed and not is_installed():
        uv_pip("install", str(SPECIAL))
    elif not was_installed and is_installed():
        uv_pip("uninstall", DISTRIBUTION)
    assert is_installed() == was_installed


def special_graph() -> GraphBuilder:
    g = GraphBuilder()
    half, one = g.leaf(0.5), g.leaf(1.0)
    a, b = g.leaf(0.5), g.leaf(-1.0)
    g.op("erf", half)
    g.op("gelu", one)
    g.op("logaddexp", a, b)
    return g


def evaluate_on_a_new_server(
    graph: GraphBuilder, tangents: list[float] | None = None
) -> tuple[dict, pb.EvaluateResponse]:
    """ListOps and an evaluation of ``graph`` (with leaf ``tangents``, if given) on a fresh
    ``gradserve serve`` process, which runs plugin ops in isolation workers."""
    with Served("--workers", "1") as served:
        channel, stub = connect(f"127.0.0.1:{served.port}")
        with channel:
            ops = {op.name: op for op in stub.ListOps(pb.ListOpsRequest()).ops}
            nodes = [4, 5, 6, 0, 1, 2, 3]  # erf, gelu, logaddexp and the leaves
            request = pb.EvaluateRequest(graph=graph.proto(), outputs=[4, 5, 6], nodes=nodes)
            if tangents is not None:
                request.leaf_tangents.extend(tangents)
            return ops, stub.Evaluate(request)


def test_install_then_uninstall_adds_then_removes_the_ops(environment_restored):
    if environment_restored:
        assert uv_pip("uninstall", DISTRIBUTION).returncode == 0
    installed = uv_pip("install", str(SPECIAL))
    assert installed.returncode == 0, installed.stderr
    checked = ops_check()
    assert checked.returncode == 0, checked.stdout
    for name in ("erf", "gelu", "logaddexp"):
        assert re.search(rf"^ok   {name} .*\[{DISTRIBUTION} 0.1.0\]( \w+)?$", checked.stdout, re.M)

    ops, reply = evaluate_on_a_new_server(special_graph())
    for name, arity in [("erf", 1), ("gelu", 1), ("logaddexp", 2)]:
        assert (ops[name].arity, ops[name].variadic) == (arity, False)
        assert (ops[name].distribution, ops[name].version) == (DISTRIBUTION, "0.1.0")
        assert ops[name].entry_point == name
        assert "Defined everywhere" in ops[name].doc
    erf, gelu, lse = reply.values[:3]
    assert erf == pytest.approx(0.5204998778130465, rel=1e-15)  # erf(1/2), tables
    assert gelu == pytest.approx(PHI_1, rel=1e-15)
    assert lse == pytest.approx(math.log(math.exp(0.5) + math.exp(-1.0)), rel=1e-15)
    d_half, d_one, d_a, d_b = reply.grads[3:]
    assert d_half == pytest.approx(2 / math.sqrt(math.pi) * math.exp(-0.25), rel=1e-14)
    assert d_one == pytest.approx(PHI_1 + math.exp(-0.5) / math.sqrt(2 * math.pi), rel=1e-14)
    softmax_a = math.exp(0.5) / (math.exp(0.5) + math.exp(-1.0))
    assert (d_a, d_b) == pytest.approx((softmax_a, 1 - softmax_a), rel=1e-14)

    # Second order through the isolation workers: grad tangents are Hessian-vector products.
    _, second = evaluate_on_a_new_server(special_graph(), tangents=[1.0, -2.0, 0.5, 3.0])
    assert all(ops[name].second_order for name in ("erf", "gelu", "logaddexp"))
    d2_half = -2 * 0.5 * 2 / math.sqrt(math.pi) * math.exp(-0.25)
    d2_one = math.exp(-0.5) / math.sqrt(2 * math.pi) * (2 - 1)
    ab = softmax_a * (1 - softmax_a)  # d2/da2 = d2/db2 = -d2/da db
    expected = [d2_half * 1.0, d2_one * -2.0, ab * 0.5 - ab * 3.0, -ab * 0.5 + ab * 3.0]
    assert list(second.grad_tangents[3:]) == pytest.approx(expected, rel=1e-13)
    assert list(second.value_tangents[:1]) == pytest.approx([d_half], rel=1e-14)

    uninstalled = uv_pip("uninstall", DISTRIBUTION)
    assert uninstalled.returncode == 0, uninstalled.stderr
    with pytest.raises(grpc.RpcError) as caught:
        evaluate_on_a_new_server(special_graph())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node 4: unknown op 'erf'" in caught.value.details()
