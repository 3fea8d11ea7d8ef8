"""W6: one training step, as micrograd's README and its two-moons demo write it, on
gradserve's ``nn`` (the default server, ``loss.backward()``) and on micrograd's in process.

A step builds the loss from the model, zeroes the gradients, backpropagates and updates every
parameter: the whole of what a learner's loop does, so micrograd's time includes collecting
its graphs (reference cycles, which its own steps leave for the garbage collector), and
gradserve's includes recording, sending, evaluating and filling. The two run the same steps
from the same weights, alternately, block by block, so that both see the same load.
"""

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import micrograd.engine
import micrograd.nn
import numpy as np

import gradserve.client
from bench import servers
from bench.measure import Report
from gradserve.client import nn

README_XS = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]]
README_YS = [1.0, -1.0, -1.0, 1.0]


@dataclass(frozen=True)
class Task:
    name: str
    sizes: list[int]  # the MLP's inputs, then its layers' widths
    step: Callable  # (model, Value class) -> loss, one training step
    target: float  # the ratio to reach, micrograd's time over gradserve's


def readme_step(model, value) -> object:
    """micrograd's README: squared error on four samples, learning rate 0.01."""
    loss = sum((model(x) - y) ** 2 for x, y in zip(README_XS, README_YS, strict=True))
    model.zero_grad()
    loss.backward()
    for p in model.parameters():
        p.data += -0.01 * p.grad
    return loss


def two_moons(n: int = 100, seed: int = 1) -> tuple[list[list[float]], list[float]]:
    """``n`` points on two interleaved half circles with noise, labels -1 and +1."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t)) + rng.normal(0, 0.1, n)
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t)) + rng.normal(0, 0.1, n)
    return np.stack([x, y], axis=1).tolist(), np.where(upper, -1.0, 1.0).tolist()


MOONS_X, MOONS_Y = two_moons()


def moons_step(model, value) -> object:
    """micrograd's demo.ipynb: all 100 points, max-margin loss, L2 regularization (alpha
    1e-4), learning rate 0.1; its accuracy, which reads every score's .data, is left out."""
    inputs = [list(map(value, row)) for row in MOONS_X]
    scores = list(map(model, inputs))
    losses = [(1 + -yi * si).relu() for yi, si in zip(MOONS_Y, scores, strict=True)]
    data_loss = sum(losses) * (1.0 / len(losses))
    reg_loss = 1e-4 * sum(p * p for p in model.parameters())
    total = data_loss + reg_loss
    model.zero_grad()
    total.backward()
    for p in model.parameters():
        p.data -= 0.1 * p.grad
    return total


TASKS = [
    Task("MLP(3, [4, 4, 1]) on 4 samples (README)", [3, 4, 4, 1], readme_step, 1.0),
    Task("MLP(2, [16, 16, 1]) on 100 samples (two moons)", [2, 16, 16, 1], moons_step, 25.0),
]


def _models(sizes: list[int]):
    """micrograd's MLP and gradserve's, with the same weights."""
    random.seed(1)
    theirs = micrograd.nn.MLP(sizes[0], sizes[1:])
    ours = nn.MLP(sizes[0], sizes[1:])
    for p, q in zip(theirs.parameters(), ours.parameters(), strict=True):
        q.data = p.data
    return theirs, ours


def _seconds_per_step(model, value, step: Callable, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        step(model, value)
    return (time.perf_counter() - started) / steps


def w6_training(report: Report, sizes, repeats: int, peer_list) -> None:
    """One training step on gradserve's nn against micrograd's, for each task."""
    with servers.gradserve(workers=1) as server:
        gradserve.client.use(server.target)
        try:
            for task in TASKS:
                _measure(report, task, sizes.training_steps, repeats)
        finally:
            gradserve.client.use(None)


def _measure(report: Report, task: Task, steps: tuple[int, int], repeats: int) -> None:
    theirs, ours = _models(task.sizes)
    workload = f"W6 training: {task.name}"
    first_theirs = task.step(theirs, micrograd.engine.Value)
    first_ours = task.step(ours, gradserve.client.Value)
    report.agree(
        workload,
        "gradserve vs micrograd: loss and parameter gradients of the first step",
        [first_ours.data, *(p.grad for p in ours.parameters())],
        [first_theirs.data, *(p.grad for p in theirs.parameters())],
    )
    count = steps[0] if task.target <= 1 else steps[1]
    task.step(ours, gradserve.client.Value)  # the structure's second call: its program
    times = {"micrograd": [], "gradserve": []}
    for _ in range(repeats):
        times["micrograd"].append(
            _seconds_per_step(theirs, micrograd.engine.Value, task.step, count)
        )
        times["gradserve"].append(_seconds_per_step(ours, gradserve.client.Value, task.step, count))
    theirs_s, ours_s = (float(np.median(times[k])) for k in ("micrograd", "gradserve"))
    ratio = theirs_s / ours_s
    report.target(
        workload,
        f"one step (mean of {count} steps, median of {repeats} runs)",
        f"{ours_s * 1e3:.2f} ms",
        f"micrograd {theirs_s * 1e3:.2f} ms: {ratio:.2f}x",
        f">= {task.target:g}x micrograd",
        ratio >= task.target,
    )
