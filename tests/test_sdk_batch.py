"""Batch evaluation through the SDK: one call, B rows of leaf values."""

import asyncio
import math

import numpy as np
import pytest

from gradserve.client import AsyncClient, Client, Value


def neuron():
    x1, x2 = Value(2.0, "x1"), Value(0.0, "x2")
    w1, w2 = Value(-3.0, "w1"), Value(1.0, "w2")
    b = Value(6.8813735870195432, "b")
    return (x1, x2, w1, w2, b), (x1 * w1 + x2 * w2 + b).tanh()


def check_rows(result, x1s, w1s):
    assert result.outputs.shape == (len(x1s), 1)
    assert result.grads.shape == (len(x1s), 3)
    for r, (x1, w1) in enumerate(zip(x1s, w1s, strict=True)):
        o = math.tanh(x1 * w1 + 6.8813735870195432)
        slope = 1 - o * o
        assert result.outputs[r, 0] == pytest.approx(o, rel=1e-12)
        assert result.values[r].tolist() == pytest.approx([x1, w1, 6.8813735870195432])
        assert result.grads[r].tolist() == pytest.approx(
            [slope * w1, slope * x1, slope], rel=1e-12, abs=1e-15
        )


def test_a_batch_evaluates_every_row(target):
    (x1, _, w1, _, b), o = neuron()
    rng = np.random.default_rng(3)
    x1s, w1s = rng.uniform(-2, 2, 50), rng.uniform(-2, 2, 50)
    with Client(target) as client:
        result = client.evaluate(o, wrt=[x1, w1, b], batch={x1: x1s, w1: w1s})
    check_rows(result, x1s, w1s)
    assert (x1.data, w1.data) == (2.0, -3.0)  # the Values are untouched


def test_the_async_client_batches_too(target):
    (x1, _, w1, _, b), o = neuron()

    async def batched():
        async with AsyncClient(target) as client:
            return await client.evaluate(o, wrt=[x1, w1, b], batch={x1: [1, -1], w1: [0.5, 2]})

    check_rows(asyncio.run(batched()), [1.0, -1.0], [0.5, 2.0])


def test_a_bad_batch_is_a_clear_error(target):
    (x1, x2, *_), o = neuron()
    with Client(target) as client:
        with pytest.raises(ValueError, match="not a leaf the outputs depend on"):
            client.evaluate(o, batch={o: [1.0, 2.0]})
        with pytest.raises(ValueError, match="same, non-zero number of values"):
            client.evaluate(o, batch={x1: [1.0, 2.0], x2: [1.0]})
