"""``gradserve.client.optim``: SGD and Adam against PyTorch's update formulas, written out
here by hand, one scalar at a time (issue 21, point 6)."""

import math
import random

import pytest

from gradserve.client import Client, Value
from gradserve.client.nn import MLP
from gradserve.client.optim import SGD, Adam

STEPS = 6


def _params_and_grads(seed: int, n: int = 5):
    """n parameters and STEPS rounds of gradients, all drawn at random."""
    rng = random.Random(seed)
    params = [Value(rng.uniform(-2, 2)) for _ in range(n)]
    grads = [[rng.uniform(-3, 3) for _ in range(n)] for _ in range(STEPS)]
    return params, grads


def _run(optimizer, params, grads) -> list[list[float]]:
    """The parameters' data after each step, the gradients set as a backward would."""
    seen = []
    for round_ in grads:
        optimizer.zero_grad()
        assert all(p.grad == 0.0 for p in params)
        for p, g in zip(params, round_, strict=True):
            p.grad = g
        optimizer.step()
        seen.append([p.data for p in params])
    return seen


def _sgd_by_hand(theta, grads, lr, momentum, dampening, weight_decay, nesterov):
    theta, buffers, seen = list(theta), [None] * len(theta), []
    for round_ in grads:
        for i, g in enumerate(round_):
            g = g + weight_decay * theta[i]
            if momentum:
                if buffers[i] is None:
                    buffers[i] = g
                else:
                    buffers[i] = momentum * buffers[i] + (1 - dampening) * g
                g = g + momentum * buffers[i] if nesterov else buffers[i]
            theta[i] = theta[i] - lr * g
        seen.append(list(theta))
    return seen


def _adam_by_hand(theta, grads, lr, beta1, beta2, eps, weight_decay):
    theta, m, v, seen = list(theta), [0.0] * len(theta), [0.0] * len(theta), []
    for t, round_ in enumerate(grads, start=1):
        for i, g in enumerate(round_):
            g = g + weight_decay * theta[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat = m[i] / (1 - beta1**t)
            v_hat = v[i] / (1 - beta2**t)
            theta[i] = theta[i] - lr * m_hat / (math.sqrt(v_hat) + eps)
        seen.append(list(theta))
    return seen


def _close(got, expected):
    for row_got, row_expected in zip(got, expected, strict=True):
        assert row_got == pytest.approx(row_expected, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize(
    ("momentum", "dampening", "weight_decay", "nesterov"),
    [(0.0, 0.0, 0.0, False), (0.9, 0.0, 0.0, False), (0.8, 0.3, 0.01, False), (0.9, 0, 0.1, True)],
)
def test_sgd_follows_pytorchs_formulas(momentum, dampening, weight_decay, nesterov):
    params, grads = _params_and_grads(seed=int(momentum * 10) + nesterov)
    start = [p.data for p in params]
    options = dict(momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    got = _run(SGD(params, lr=0.05, nesterov=nesterov, **options), params, grads)
    _close(got, _sgd_by_hand(start, grads, 0.05, nesterov=nesterov, **options))


@pytest.mark.parametrize(
    ("betas", "eps", "weight_decay"),
    [((0.9, 0.999), 1e-8, 0.0), ((0.5, 0.9), 1e-3, 0.0), ((0.8, 0.99), 1e-6, 0.05)],
)
def test_adam_follows_pytorchs_formulas(betas, eps, weight_decay):
    params, grads = _params_and_grads(seed=int(betas[0] * 10))
    start = [p.data for p in params]
    got = _run(Adam(params, lr=0.1, betas=betas, eps=eps, weight_decay=weight_decay), params, grads)
    _close(got, _adam_by_hand(start, grads, 0.1, *betas, eps, weight_decay))


def test_adams_first_step_moves_each_parameter_by_about_lr():
    """With bias correction m̂ = g and v̂ = g², so the first step is lr · g / (|g| + ε)."""
    params = [Value(1.0), Value(-1.0)]
    _run(Adam(params, lr=0.01), params, [[1e-4, -50.0]])
    assert params[0].data == pytest.approx(1.0 - 0.01 * 1e-4 / (1e-4 + 1e-8), rel=1e-12)
    assert params[1].data == pytest.approx(-1.0 + 0.01 * 50 / (50 + 1e-8), rel=1e-12)


def test_bad_settings_and_parameters_are_refused():
    with pytest.raises(ValueError, match="empty"):
        SGD([])
    with pytest.raises(TypeError, match="leaf Values"):
        Adam([Value(1.0) * 2])
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([Value(1.0)], nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        Adam([Value(1.0)], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="learning rate"):
        SGD([Value(1.0)], lr=-1)
    for dampening in (0.1, -0.1):  # Nesterov needs a dampening of exactly 0
        with pytest.raises(ValueError, match="Nesterov"):
            SGD([Value(1.0)], momentum=0.9, dampening=dampening, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):  # and a positive momentum
        SGD([Value(1.0)], momentum=-0.5, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        Adam([Value(1.0)], betas=(-0.1, 0.9))


def test_the_edges_pytorch_accepts_are_accepted():
    """torch.optim's bounds are 0 <= lr and 0 <= beta < 1: a rate of 0 leaves the
    parameters where they are, and betas of 0 make Adam's step lr * g / (|g| + eps)."""
    params, grads = _params_and_grads(seed=5)
    start = [p.data for p in params]
    assert _run(SGD(params, lr=0.0, momentum=0.5), params, grads)[-1] == start
    got = _run(Adam(params, lr=0.1, betas=(0.0, 0.0), eps=1e-8), params, grads)
    _close(got, _adam_by_hand(start, grads, 0.1, 0.0, 0.0, 1e-8, 0.0))
    nesterov = SGD(params, lr=0.1, momentum=0.9, dampening=0.0, nesterov=True)
    assert nesterov.nesterov and nesterov.dampening == 0.0


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_a_training_loop_on_the_server_follows_the_formulas(target, name):
    """micrograd's loop with an optimizer: the parameters end where the formulas, replayed
    on the gradients the server computed at each step, put them; and the loss goes down."""
    random.seed(3)
    model = MLP(3, [4, 4, 1])
    xs = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]]
    ys = [1.0, -1.0, -1.0, 1.0]
    params = model.parameters()
    optimizer = SGD(params, lr=0.02, momentum=0.9) if name == "sgd" else Adam(params, lr=0.05)
    start = [p.data for p in params]
    grads, losses = [], []
    with Client(target) as client:
        for _ in range(20):
            loss = sum((model(x) - y) ** 2 for x, y in zip(xs, ys, strict=True))
            optimizer.zero_grad()
            loss.backward(client)
            losses.append(loss.data)
            grads.append([p.grad for p in params])
            optimizer.step()
    if name == "sgd":
        by_hand = _sgd_by_hand(start, grads, 0.02, 0.9, 0.0, 0.0, False)
    else:
        by_hand = _adam_by_hand(start, grads, 0.05, 0.9, 0.999, 1e-8, 0.0)
    _close([[p.data for p in params]], by_hand[-1:])
    assert losses[-1] < losses[0] / 2
