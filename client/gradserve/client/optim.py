"""``SGD`` and ``Adam`` as ``torch.optim`` has them, on the leaf Values of ``Module.parameters()``.

    model = MLP(3, [4, 4, 1])
    optimizer = Adam(model.parameters(), lr=0.01)
    for step in range(100):
        loss = sum((model(x) - y) ** 2 for x, y in zip(xs, ys))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

The updates follow PyTorch's documented algorithms (and the order of their float
operations), on the parameters' ``.data`` with their ``.grad``; state (momentum buffers,
moment estimates, the step count) lives in the optimizer, as NumPy arrays over all
parameters at once.
"""

import math
from collections.abc import Iterable

import numpy as np

from gradserve.client.value import Value


class Optimizer:
    """What both optimizers share: the parameters, ``zero_grad`` and reading and writing
    their data and gradients as arrays."""

    def __init__(self, params: Iterable[Value], lr: float) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("the optimizer got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Value) or p._tape is not None:
                raise TypeError(f"parameters must be leaf Values (Value(...)), got {p!r}")
        if lr < 0:
            raise ValueError(f"invalid learning rate: {lr}")
        self.lr = lr

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to 0 (a backward sets them afresh anyway)."""
        for p in self.params:
            p.grad = 0.0

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.params)
        data = np.fromiter((p.data for p in self.params), dtype=np.float64, count=n)
        grads = np.fromiter((p.grad for p in self.params), dtype=np.float64, count=n)
        return data, grads

    def _write(self, data: np.ndarray) -> None:
        for p, x in zip(self.params, data.tolist(), strict=True):
            p.data = x


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD``: with ``weight_decay`` λ the
    gradient is g + λθ; with ``momentum`` μ the buffer is b ← μb + (1 - dampening)g (b = g on
    the first step), and the step uses b, or g + μb with ``nesterov``; then θ ← θ - lr·step.
    """

    def __init__(
        self,
        params: Iterable[Value],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov
        self.buffer: np.ndarray | None = None

    def step(self) -> None:
        data, grads = self._arrays()
        if self.weight_decay:
            grads = grads + self.weight_decay * data
        if self.momentum:
            if self.buffer is None:
                self.buffer = grads.copy()
            else:
                self.buffer = self.momentum * self.buffer + (1 - self.dampening) * grads
            grads = grads + self.momentum * self.buffer if self.nesterov else self.buffer
        self._write(data - self.lr * grads)


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam``: at step t, with g the gradient (+ λθ with
    ``weight_decay``), m ← β₁m + (1 - β₁)g, v ← β₂v + (1 - β₂)g², and
    θ ← θ - lr / (1 - β₁ᵗ) · m / (√v / √(1 - β₂ᵗ) + ε)."""

    def __init__(
        self,
        params: Iterable[Value],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"invalid betas: {betas}")
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.t = 0
        self.m = np.zeros(len(self.params))
        self.v = np.zeros(len(self.params))

    def step(self) -> None:
        data, grads = self._arrays()
        if self.weight_decay:
            grads = grads + self.weight_decay * data
        beta1, beta2 = self.betas
        self.t += 1
        self.m = beta1 * self.m + (1 - beta1) * grads
        self.v = beta2 * self.v + (1 - beta2) * grads * grads
        step_size = self.lr / (1 - beta1**self.t)
        denominator = np.sqrt(self.v) / math.sqrt(1 - beta2**self.t) + self.eps
        self._write(data - step_size * self.m / denominator)
