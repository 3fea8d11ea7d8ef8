"""The asyncio client against a real server: the same calls as the sync client, awaited."""

import asyncio
import math

import pytest

from gradserve.client import AsyncClient, GraphError, ServerUnavailable, Value


def run(coroutine):
    return asyncio.run(coroutine)


def test_backward_fills_the_notebook_neuron(target):
    async def main():
        async with AsyncClient(target) as client:
            x1, w1, b = Value(2.0), Value(-3.0), Value(6.8813735870195432)
            n = x1 * w1 + b
            o = n.tanh()
            await o.backward(client)
            return o, n, x1, w1, b

    o, n, x1, w1, b = run(main())
    dn = 1 - math.tanh(n.data) ** 2
    assert o.data == pytest.approx(math.tanh(2.0 * -3.0 + 6.8813735870195432), rel=1e-12)
    assert (x1.grad, w1.grad, b.grad) == pytest.approx((dn * -3.0, dn * 2.0, dn), rel=1e-12)


def test_evaluate_stream_and_ops(target):
    async def main():
        async with AsyncClient(target) as client:
            a, b = Value(2.0), Value(5.0)
            result = await client.evaluate(a * b + a, wrt=[a, b])
            y = a
            for _ in range(9):
                y = y + a
            chunks = [chunk async for chunk in client.stream(y, chunk_size=1, progress=False)]
            return result, chunks, await client.ops()

    result, chunks, ops = run(main())
    assert result.outputs.tolist() == [12.0]
    assert result.grads.tolist() == [6.0, 2.0]  # d(ab + a)/da = b + 1, /db = a
    assert [c.grads.tolist() for c in chunks] == [[10.0]]  # one leaf: a, used 10 times
    assert "tanh" in {op.name for op in ops}


def test_errors_are_typed(target):
    async def main():
        async with AsyncClient(target) as client:
            await (Value(1.0).apply("no_such_op")).backward(client)

    with pytest.raises(GraphError, match="unknown op 'no_such_op'") as caught:
        run(main())
    assert caught.value.node == 1


def test_a_server_that_is_down_is_unavailable(unused_target):
    async def main():
        async with AsyncClient(unused_target, timeout=5) as client:
            await client.ops()

    with pytest.raises(ServerUnavailable):
        run(main())
