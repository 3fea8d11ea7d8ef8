"""Client.jvp, hvp and hessian (and AsyncClient's) against closed forms, finite differences
of first-order calls and, when it is installed, PyTorch in float64."""

import asyncio
import math

import numpy as np
import pytest

from gradserve.client import AsyncClient, Client, GraphError, Value, second_order
from gradserve.client.errors import Where

H = 1e-5


def f_closed(x: float, y: float, z: float):
    """f = x*x*y + sin(x*y) + exp(z) * y + z*z*z / 3 with its gradient and Hessian."""
    s, c = math.sin(x * y), math.cos(x * y)
    value = x * x * y + s + math.exp(z) * y + z**3 / 3
    gradient = np.array([2 * x * y + y * c, x * x + x * c + math.exp(z), math.exp(z) * y + z * z])
    hessian = np.array(
        [
            [2 * y - y * y * s, 2 * x + c - x * y * s, 0.0],
            [2 * x + c - x * y * s, -x * x * s, math.exp(z)],
            [0.0, math.exp(z), math.exp(z) * y + 2 * z],
        ]
    )
    return value, gradient, hessian


def f_values(x: float, y: float, z: float):
    xs = [Value(x, "x"), Value(y, "y"), Value(z, "z")]
    a, b, c = xs
    xy = a * b  # shared below
    out = (a * a) * b + xy.apply("sin") + c.exp() * b + c * c * c / 3
    return out, xs


POINT = (0.7, -1.2, 0.4)


@pytest.fixture(scope="module")
def client(target):
    with Client(target, timeout=30) as client:
        yield client


def test_jvp_hvp_and_hessian_match_the_closed_forms(client):
    out, xs = f_values(*POINT)
    _, gradient, hessian = f_closed(*POINT)
    t = [0.5, -1.0, 2.0]
    assert client.jvp(out, xs, t) == pytest.approx(gradient @ t, rel=1e-13)
    hvp = client.hvp(out, xs, t)
    assert hvp.shape == (3,)
    np.testing.assert_allclose(hvp, hessian @ t, rtol=1e-13)
    full = client.hessian(out, xs)
    assert full.shape == (3, 3)
    np.testing.assert_allclose(full, hessian, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(full, full.T, rtol=1e-14, atol=1e-15)


def test_a_subset_of_the_leaves_holds_the_others_constant(client):
    out, (x, y, z) = f_values(*POINT)
    _, _, hessian = f_closed(*POINT)
    np.testing.assert_allclose(client.hessian(out, [z, x]), hessian[np.ix_([2, 0], [2, 0])])
    assert client.hvp(out, [y], [2.0])[0] == pytest.approx(2 * hessian[1, 1], rel=1e-13)


def test_hessian_of_a_random_expression_matches_finite_differences(client):
    rng = np.random.default_rng(5)
    start = rng.uniform(0.5, 1.5, size=4)
    leaves = [Value(float(v)) for v in start]
    nodes = list(leaves)
    for _ in range(25):
        a, b = (nodes[int(i)] for i in rng.integers(len(nodes), size=2))
        kind = int(rng.integers(6))
        if kind == 0:
            nodes.append(a * a)  # a repeated input
        elif kind == 1:
            nodes.append(a.apply("sum", b, a, nodes[0]))  # variadic, repeats too
        elif kind == 2:
            nodes.append((a * b).tanh())
        elif kind == 3:
            nodes.append(a.sigmoid() * b.apply("sin"))
        elif kind == 4:
            nodes.append((a * a + 1.0).log() - b.apply("cos"))
        else:
            nodes.append(a.apply("softplus") / (1.0 + b * b))
    out = nodes[-1] + nodes[-2] * nodes[-3] + sum(nodes[4:], Value(0.0)) * 0.01
    hessian = client.hessian(out, leaves)
    np.testing.assert_allclose(hessian, hessian.T, rtol=1e-10, atol=1e-12)
    for j, leaf in enumerate(leaves):
        grads = []
        for step in (H, -H):
            leaf.data = float(start[j] + step)
            grads.append(client.evaluate(out, leaves).grads)
        leaf.data = float(start[j])
        np.testing.assert_allclose(
            hessian[j], (grads[0] - grads[1]) / (2 * H), rtol=1e-5, atol=1e-6
        )


def test_the_async_client_gives_the_same(target):
    out, xs = f_values(*POINT)
    _, gradient, hessian = f_closed(*POINT)

    async def run():
        async with AsyncClient(target, timeout=30) as client:
            return (
                await client.jvp(out, xs, [1.0, 0.0, 0.0]),
                await client.hvp(out, xs, [0.0, 1.0, 0.0], timeout=20),
                await client.hessian(out, xs),
            )

    jvp, hvp, full = asyncio.run(run())
    assert jvp == pytest.approx(gradient[0], rel=1e-13)
    np.testing.assert_allclose(hvp, hessian[:, 1], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(full, hessian, rtol=1e-13, atol=1e-15)


def test_non_finite_results_need_allow_non_finite(client):
    x = Value(800.0)
    out = x.exp()
    with pytest.raises(GraphError):
        client.hvp(out, [x], [1.0])
    # IEEE rules: exp(800) overflows, and its local derivative inf times a zero gives NaN.
    assert not np.isfinite(client.hvp(out, [x], [1.0], allow_non_finite=True)[0])


def test_bad_arguments_are_refused_before_calling(client):
    out, (x, y, _) = f_values(*POINT)
    for wrong in ([1.0], [1.0, 2.0, 3.0], [[1.0, 2.0], [3.0, 4.0]]):  # too few, too many, 2-D
        with pytest.raises(ValueError, match="one number per Value of wrt"):
            client.jvp(out, [x, y], wrong)
        with pytest.raises(ValueError, match="one number per Value of wrt"):
            client.hvp(out, [x, y], wrong)
    with pytest.raises(ValueError, match="leaf Values"):
        client.hessian(out, [x * y])


def test_against_pytorch_when_it_is_installed(client):
    torch = pytest.importorskip("torch")

    def f(v):
        x, y, z = v
        return x * x * y + torch.sin(x * y) + torch.exp(z) * y + z**3 / 3

    point = torch.tensor(POINT, dtype=torch.float64)
    expected = torch.autograd.functional.hessian(f, point).numpy()
    out, xs = f_values(*POINT)
    np.testing.assert_allclose(client.hessian(out, xs), expected, rtol=1e-12, atol=1e-14)


def test_a_call_s_timeout_replaces_the_client_s_only_when_given():
    """What a second-order call's options and error messages name: the client's timeout,
    or the call's own when it gives one."""
    defaults = Where(target="server:1", tls=True, timeout=5.0)
    assert second_order.where(defaults, None) == defaults
    assert second_order.where(defaults, 2.0) == Where(target="server:1", tls=True, timeout=2.0)
    assert second_order.options({"timeout": 5.0}, None) == {"timeout": 5.0}
    assert second_order.options({"timeout": 5.0, "x": 1}, 2.0) == {"timeout": 2.0, "x": 1}
