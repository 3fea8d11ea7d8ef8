"""micrograd's ``nn``: ``Module``, ``Neuron``, ``Layer`` and ``MLP``, on gradserve Values.

The same classes and calls as ``micrograd.nn``, so that its training loop runs unchanged:

    model = MLP(3, [4, 4, 1])
    loss = sum((model(x) - y) ** 2 for x, y in zip(xs, ys))
    model.zero_grad()
    loss.backward()  # the default server (gradserve.client.use, or GRADSERVE_TARGET)
    for p in model.parameters():
        p.data += -0.01 * p.grad
"""

import random

from gradserve.client.value import Value


class Module:
    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = 0

    def parameters(self) -> list[Value]:
        return []


class Neuron(Module):
    """``relu(w . x + b)``, or ``w . x + b`` when not ``nonlin``; weights drawn uniformly
    from [-1, 1] as micrograd's, the bias 0."""

    def __init__(self, nin: int, nonlin: bool = True) -> None:
        self.w = [Value(random.uniform(-1, 1)) for _ in range(nin)]
        self.b = Value(0)
        self.nonlin = nonlin

    def __call__(self, x) -> Value:
        # micrograd's sum((wi * xi for ...), self.b), the same nodes in the same order,
        # without a generator: half of a small model's forward pass went to resuming it.
        act = self.b
        for wi, xi in zip(self.w, x, strict=False):
            act = act + wi * xi
        return act.relu() if self.nonlin else act

    def parameters(self) -> list[Value]:
        return [*self.w, self.b]

    def __repr__(self) -> str:
        return f"{'ReLU' if self.nonlin else 'Linear'}Neuron({len(self.w)})"


class Layer(Module):
    def __init__(self, nin: int, nout: int, **kwargs) -> None:
        self.neurons = [Neuron(nin, **kwargs) for _ in range(nout)]

    def __call__(self, x) -> Value | list[Value]:
        out = [n(x) for n in self.neurons]
        return out[0] if len(out) == 1 else out

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        return f"Layer of [{', '.join(str(n) for n in self.neurons)}]"


class MLP(Module):
    """Layers of the sizes ``nouts`` on ``nin`` inputs, ReLU but for the last (linear)."""

    def __init__(self, nin: int, nouts: list[int]) -> None:
        sz = [nin, *nouts]
        self.layers = [
            Layer(sz[i], sz[i + 1], nonlin=i != len(nouts) - 1) for i in range(len(nouts))
        ]

    def __call__(self, x) -> Value | list[Value]:
        for layer in self.layers:
            x = layer(x)
        return x

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return f"MLP of [{', '.join(str(layer) for layer in self.layers)}]"
