"""Train a tiny micrograd-style MLP on a two-moons data set, with gradients from a server.

The model, the loss and the update are written exactly as in micrograd; only `backward`
runs remotely. Run a server (`uv run gradserve serve`), then:
uv run python examples/mlp_two_moons.py
"""

import argparse
import random

import numpy as np

from gradserve.client import DEFAULT_TARGET, Client, Value


class Neuron:
    def __init__(self, fan_in: int, rng: random.Random, nonlinear: bool = True) -> None:
        self.w = [Value(rng.uniform(-1, 1)) for _ in range(fan_in)]
        self.b = Value(0.0)
        self.nonlinear = nonlinear

    def __call__(self, x):
        act = sum((wi * xi for wi, xi in zip(self.w, x, strict=True)), self.b)
        return act.tanh() if self.nonlinear else act

    def parameters(self) -> list[Value]:
        return [*self.w, self.b]


class Layer:
    def __init__(self, fan_in: int, fan_out: int, rng: random.Random, **kwargs) -> None:
        self.neurons = [Neuron(fan_in, rng, **kwargs) for _ in range(fan_out)]

    def __call__(self, x):
        return [n(x) for n in self.neurons]

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]


class MLP:
    def __init__(self, fan_in: int, sizes: list[int], rng: random.Random) -> None:
        dims = [fan_in, *sizes]
        self.layers = [
            Layer(dims[i], dims[i + 1], rng, nonlinear=i != len(sizes) - 1)
            for i in range(len(sizes))
        ]

    def __call__(self, x) -> Value:
        for layer in self.layers:
            x = layer(x)
        return x[0]

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]


def two_moons(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on two interleaved half circles, labels -1 and +1."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    points = np.stack([x, y], axis=1) + rng.normal(0, noise, (n, 2))
    return points, np.where(upper, -1.0, 1.0)


def loss_and_accuracy(model: MLP, points: np.ndarray, labels: np.ndarray):
    """micrograd's max-margin loss with L2 regularization, and the accuracy."""
    scores = [model(list(p)) for p in points.tolist()]
    margins = [(1 + -yi * si).relu() for yi, si in zip(labels.tolist(), scores, strict=True)]
    data_loss = sum(margins, Value(0.0)) * (1.0 / len(margins))
    reg_loss = 1e-4 * sum((p * p for p in model.parameters()), Value(0.0))
    return data_loss + reg_loss, scores


def main(target: str, steps: int, points: int) -> list[float]:
    xs, ys = two_moons(points, noise=0.1, seed=1)
    model = MLP(2, [8, 8, 1], random.Random(1))
    losses = []
    with Client(target) as client:
        for step in range(steps):
            loss, scores = loss_and_accuracy(model, xs, ys)
            loss.backward(client)
            correct = sum((s.data > 0) == (y > 0) for s, y in zip(scores, ys, strict=True))
            learning_rate = 1.0 - 0.9 * step / steps
            for p in model.parameters():
                p.data -= learning_rate * p.grad
            losses.append(loss.data)
            print(f"step {step:3d} loss {loss.data:.4f} accuracy {correct / len(ys):.0%}")
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=DEFAULT_TARGET, help="the server's host:port")
    parser.add_argument("--steps", type=int, default=50, help="gradient descent steps")
    parser.add_argument("--points", type=int, default=100, help="size of the data set")
    args = parser.parse_args()
    main(args.target, args.steps, args.points)
