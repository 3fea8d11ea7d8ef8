"""The Python examples of the documentation run as written against a live server, and give
what closed forms and finite differences give.

The blocks are the ones marked ``<!-- runs in tests/test_docs_examples.py -->`` on these
pages (tests/docs_pages.py): README.md, docs/getting-started.md, docs/sdk.md,
docs/second-order.md, docs/clients/index.md, docs/deployment.md. Each runs with the
documentation's target, localhost:50051, replaced by the test server's, and with
GRADSERVE_TARGET naming it (the default server of the examples that use one).
"""

import math

import docs_pages
import numpy as np
import pytest

MARKER = "<!-- runs in tests/test_docs_examples.py -->"
EXAMPLES = [
    block
    for page in docs_pages.pages()
    for block in docs_pages.blocks(page)
    if block.marker == MARKER
]


def run(block: docs_pages.Block, target: str, monkeypatch) -> dict:
    monkeypatch.setenv("GRADSERVE_TARGET", target)
    namespace: dict = {"__name__": "__docs_example__"}
    source = block.code.replace("localhost:50051", target)
    exec(compile(source, f"{block.page}:{block.line}", "exec"), namespace)
    return namespace


def test_the_examples_are_found():
    pages = {block.page for block in EXAMPLES}
    assert {
        "README.md",
        "docs/getting-started.md",
        "docs/sdk.md",
        "docs/second-order.md",
        "docs/clients/index.md",
    } <= pages
    assert all(block.language == "python" for block in EXAMPLES)


@pytest.mark.parametrize("block", EXAMPLES, ids=lambda b: f"{b.page}:{b.line}")
def test_the_example_runs_as_written(block, target, monkeypatch, capsys):
    namespace = run(block, target, monkeypatch)
    printed = capsys.readouterr().out
    check = CHECKS.get(fingerprint(block.code))
    if check is not None:
        check(namespace, printed)


def fingerprint(code: str) -> str:
    """Which example this is, by a line only it has."""
    for line in FINGERPRINTS:
        if line in code:
            return line
    return ""


def micrograd_expression(namespace: dict, printed: str) -> None:
    """e = (c - d).relu() + 2 tanh(c) / (1 + d^2): central differences of plain floats."""

    def e(a: float, b: float) -> float:
        c, d = a + b, a * b + b**3
        return max(c - d, 0.0) + 2 * math.tanh(c) / (1 + d**2)

    a, b, h = -4.0, 2.0, 1e-6
    value, da, db = printed.split()
    assert float(value) == pytest.approx(e(a, b), rel=1e-12)
    assert float(da) == pytest.approx((e(a + h, b) - e(a - h, b)) / (2 * h), rel=1e-6)
    assert float(db) == pytest.approx((e(a, b + h) - e(a, b - h)) / (2 * h), rel=1e-6)


def falling_loss(namespace: dict, printed: str) -> None:
    losses = [float(line.split()[1]) for line in printed.splitlines()]
    assert len(losses) == 20 and losses[-1] < losses[0]


def second_order(namespace: dict, printed: str) -> None:
    """f = x^2 y + sin(xy) at (0.7, -1.2), its gradient and Hessian in closed form."""
    x, y = 0.7, -1.2
    s, c = math.sin(x * y), math.cos(x * y)
    grad = np.array([2 * x * y + y * c, x * x + x * c])
    hessian = np.array(
        [[2 * y - y * y * s, 2 * x + c - x * y * s], [2 * x + c - x * y * s, -x * x * s]]
    )
    t = np.array([1.0, 0.5])
    assert namespace["slope"] == pytest.approx(grad @ t, rel=1e-12)
    np.testing.assert_allclose(namespace["hv"], hessian @ t, rtol=1e-12)
    np.testing.assert_allclose(namespace["hessian"], hessian, rtol=1e-12)


def neuron_request(namespace: dict, printed: str) -> None:
    """tanh(x1*w1 + x2*w2 + b): d/dx1 = w1 (1 - o^2), d/dw1 = x1 (1 - o^2), ..."""
    x1, x2, w1, w2, b = namespace["graph"].leaf_values
    slope = 1 - math.tanh(x1 * w1 + x2 * w2 + b) ** 2
    expected = [w1 * slope, w2 * slope, x1 * slope, x2 * slope, slope]
    np.testing.assert_allclose(list(namespace["reply"].grads), expected, rtol=1e-12, atol=1e-15)


def neuron_values(namespace: dict, printed: str) -> None:
    """The same neuron through the SDK: the figures it prints, from the closed form."""
    x1, x2, w1, w2, b = 2.0, 0.0, -3.0, 1.0, 6.8813735870195432
    o = math.tanh(x1 * w1 + x2 * w2 + b)
    expected = f"o = {o:.4f}, do/dx1 = {w1 * (1 - o * o):.4f}, do/dw1 = {x1 * (1 - o * o):.4f}"
    assert printed.strip() == expected == "o = 0.7071, do/dx1 = -1.5000, do/dw1 = 1.0000"


CHECKS = {
    "e = (c - d).relu() + 2 * c.tanh() / (1 + d**2)": micrograd_expression,
    "model = MLP(3, [4, 4, 1])": falling_loss,
    "hessian = client.hessian(f, [x, y])": second_order,
    "graph = pb.Graph(": neuron_request,
    "o = (x1 * w1 + x2 * w2 + b).tanh()": neuron_values,
}
FINGERPRINTS = list(CHECKS)


def test_every_check_matches_an_example():
    found = {fingerprint(block.code) for block in EXAMPLES}
    assert set(CHECKS) <= found
