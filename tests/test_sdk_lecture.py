"""What the lecture notebook relies on: a default server, .data when read, _prev and _op,
micrograd's nn, and the plan of a training loop's graphs reused without the user asking."""

import asyncio
import math
import random
import shutil

import micrograd.nn
import numpy as np
import pytest

import gradserve.client
from gradserve.client import (
    AsyncClient,
    AuthError,
    Client,
    ClientClosed,
    GradserveError,
    GraphError,
    GraphvizNotFound,
    NoServerConfigured,
    ServerUnavailable,
    Value,
    default,
    draw_dot,
    nn,
    render,
)
from gradserve.server.service.app import running_server
from gradserve.v1 import gradserve_pb2 as pb


@pytest.fixture
def no_default(monkeypatch):
    """Neither use() nor GRADSERVE_TARGET: restored after the test."""
    monkeypatch.delenv(default.ENVIRONMENT_VARIABLE, raising=False)
    gradserve.client.use(None)
    yield
    gradserve.client.use(None)


@pytest.fixture
def used(no_default, target):
    """A default server set with use(), its calls' requests recorded."""
    client = gradserve.client.use(target)
    sent = []
    send = client._send  # every Evaluate request, on the Train stream or as a call

    def recording(request):
        sent.append(pb.EvaluateRequest.FromString(request))
        return send(request)

    client._send = recording
    client.sent = sent
    return client


def _lecture_expression():
    a, b, c, f = Value(2.0, label="a"), Value(-3.0, label="b"), Value(10.0, label="c"), Value(-2.0)
    e = a * b
    d = e + c
    return a, b, c, f, e, d, d * f


def test_backward_without_a_server_says_how_to_set_one(no_default):
    *_, loss = _lecture_expression()
    with pytest.raises(NoServerConfigured, match="GRADSERVE_TARGET") as raised:
        loss.backward()
    assert isinstance(raised.value, GradserveError)
    assert "gradserve.client.use" in str(raised.value)


def test_backward_uses_the_environments_server(no_default, monkeypatch, target):
    monkeypatch.setenv("GRADSERVE_TARGET", target)
    a, b, c, f, e, d, loss = _lecture_expression()
    loss.backward()
    # L = (a b + c) f: dL/da = b f, dL/db = a f, dL/dc = f, dL/df = a b + c
    assert (a.grad, b.grad, c.grad, f.grad) == (6.0, -4.0, -2.0, 4.0)
    assert (e.data, d.data, loss.data) == (-6.0, 4.0, -8.0)


def test_an_explicit_client_still_works_and_use_wins_over_the_environment(
    no_default, monkeypatch, target, unused_target
):
    monkeypatch.setenv("GRADSERVE_TARGET", unused_target)
    gradserve.client.use(target)
    x = Value(3.0)
    (x * x).backward()
    assert x.grad == 6.0
    with Client(target) as client:
        y = x * x * x
        y.backward(client)
    assert x.grad == 27.0


def test_a_changed_gradserve_target_gets_a_client_of_its_own(
    no_default, monkeypatch, target, unused_target
):
    """The environment's Client is kept while the variable names the same target; when it
    names another, the old Client is closed and a new one calls the new target."""
    monkeypatch.setenv("GRADSERVE_TARGET", unused_target)
    first = default.configured()
    assert default.configured() is first
    monkeypatch.setenv("GRADSERVE_TARGET", target)
    x = Value(3.0)
    (x * x).backward()
    assert x.grad == 6.0
    second = default.configured()
    assert second is not first and default.configured() is second
    with pytest.raises(GradserveError, match="the client was closed"):
        first.ops()
    # And back: a target sorting before or after the last one is as new.
    monkeypatch.setenv("GRADSERVE_TARGET", unused_target)
    assert default.configured() not in (first, second)
    with pytest.raises(GradserveError, match="the client was closed"):
        second.ops()


def test_data_read_evaluates_everything_pending_in_one_call(used):
    a, _, _, _, e, d, loss = _lecture_expression()
    assert e.data == -6.0  # read first: the whole tape's pending Values in one call
    assert len(used.sent) == 1
    assert (d.data, loss.data) == (4.0, -8.0)
    assert len(used.sent) == 1
    assert (a.grad, e.grad) == (0.0, 0.0)  # gradients wait for a backward
    assert repr(loss) == "Value(data=-8.0, grad=0.0)"


def test_data_read_stays_until_a_backward_recomputes_it(used):
    a = Value(2.0)
    y = a * a
    assert y.data == 4.0
    a.data = 5.0
    assert y.data == 4.0  # as in micrograd: computed once
    y.backward()
    assert (y.data, a.grad) == (25.0, 10.0)


def test_data_read_leaves_earlier_gradients_alone(used):
    a, b = Value(2.0), Value(3.0)
    (a * b).backward()
    z = a + b
    assert z.data == 5.0
    assert (a.grad, b.grad) == (3.0, 2.0)


def test_without_a_server_data_says_how_to_set_one_and_repr_shows_it_pending(no_default):
    *_, loss = _lecture_expression()
    loss.label = "L"
    with pytest.raises(NoServerConfigured, match="GRADSERVE_TARGET"):
        loss.data  # noqa: B018 (the read is the test)
    with pytest.raises(NoServerConfigured):
        f"{loss.data:.4f}"  # micrograd's README demo: no TypeError about None
    assert repr(loss) == "Value(data=<pending>, grad=0.0, label='L')"
    assert repr(Value(1.5)) == "Value(data=1.5, grad=0.0)"


def test_prev_and_op_as_micrograds():
    a, b, c, f, e, d, loss = _lecture_expression()
    assert loss._prev == (d, f) and d._prev == (e, c) and e._prev == (a, b)
    assert (loss._op, d._op, e._op, a._op) == ("*", "+", "*", "")
    assert a._prev == ()
    assert (a - b)._op == "sub" and a.tanh()._op == "tanh" and (a**2)._op == "pow"
    with pytest.raises(AttributeError):
        loss._prev = ()
    with pytest.raises(AttributeError):
        loss._op = "+"


def test_prev_makes_one_object_per_dropped_intermediate():
    x, w = Value(0.5, "x"), Value(-1.5, "w")
    out = (x * w + 1).tanh()  # the product and the sum are dropped at once
    (total,) = out._prev
    assert total._prev is not None and total._op == "+"
    product, one = total._prev
    assert out._prev[0] is total  # the same object each time
    assert product is total._prev[0] and product._prev == (x, w) and product._op == "*"
    assert one.data == 1.0 and one._op == ""


def test_the_notebooks_own_trace_walks_the_graph(used):
    """The lecture's trace, verbatim (recursive, as the notebook's is)."""

    def trace(root):
        nodes, edges = set(), set()

        def build(v):
            if v not in nodes:
                nodes.add(v)
                for child in v._prev:
                    edges.add((child, v))
                    build(child)

        build(root)
        return nodes, edges

    x1, x2, w1, w2 = Value(2.0), Value(0.0), Value(-3.0), Value(1.0)
    b = Value(6.8813735870195432)
    o = (x1 * w1 + x2 * w2 + b).tanh()
    nodes, edges = trace(o)
    assert len(nodes) == 10 and len(edges) == 9
    # The notebook's formatting; the first read evaluates every node, in one call.
    shown = {"%.4f" % n.data for n in nodes}  # noqa: UP031
    assert "0.7071" in shown and "-6.0000" in shown and "0.8814" in shown
    assert len(used.sent) == 1
    o.backward()
    # do/dw1 = x1 (1 - o^2) with o = tanh(x1 w1 + x2 w2 + b)
    assert w1.grad == pytest.approx(2.0 * (1 - math.tanh(-6.0 + 6.8813735870195432) ** 2))
    assert {"%.4f" % n.grad for n in nodes} >= {"0.5000", "1.0000"}  # noqa: UP031


def test_nn_has_micrograds_api_and_reprs():
    ours, theirs = nn.MLP(3, [4, 4, 1]), micrograd.nn.MLP(3, [4, 4, 1])
    assert repr(ours) == repr(theirs)
    assert len(ours.parameters()) == len(theirs.parameters()) == 41
    assert repr(nn.Neuron(2, nonlin=False)) == "LinearNeuron(2)"
    assert repr(nn.Layer(2, 2)) == "Layer of [ReLUNeuron(2), ReLUNeuron(2)]"
    assert isinstance(ours([1.0, 2.0, 3.0]), Value)
    assert len(nn.MLP(3, [4, 2])([1.0, 2.0, 3.0])) == 2
    assert isinstance(nn.Module(), nn.Module) and nn.Module().parameters() == []


def _copy_weights(source, target):
    for p, q in zip(source.parameters(), target.parameters(), strict=True):
        q.data = p.data


def test_a_training_loop_matches_micrograd_step_by_step(used):
    """micrograd's README loop on both; micrograd is the independent oracle."""
    xs = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]]
    ys = [1.0, -1.0, -1.0, 1.0]
    random.seed(1)  # weights with live ReLUs (some draws leave the network dead)
    ours, theirs = nn.MLP(3, [4, 4, 1]), micrograd.nn.MLP(3, [4, 4, 1])
    _copy_weights(theirs, ours)
    losses = []
    for _ in range(20):
        for model in (ours, theirs):
            loss = sum((model(x) - y) ** 2 for x, y in zip(xs, ys, strict=True))
            model.zero_grad()
            loss.backward()
            for p in model.parameters():
                p.data += -0.01 * p.grad
        losses.append(loss.data)
        np.testing.assert_allclose(
            [p.data for p in ours.parameters()], [p.data for p in theirs.parameters()], rtol=1e-9
        )
    assert losses[-1] < losses[0] / 2
    # The first step sent the graph, every later one only the plan's digest and leaf values.
    assert used.sent[0].graph.node_ops and not used.sent[0].plan_digest
    assert all(r.plan_digest and not r.graph.node_ops for r in used.sent[1:])
    assert len(used.sent) == 20


def test_a_lost_plan_is_sent_again_whole(no_default, registry):
    with running_server(registry) as server, Client(f"127.0.0.1:{server.port}") as client:
        x = Value(2.0)
        (x * x).backward(client)
        ((x * x).relu() * 0 + x * x).backward(client)
        for fingerprint in list(client._steps.plans._digests):  # as if the server evicted them
            client._steps.plans._digests[fingerprint] = b"\x01" * 16
        x.data = 3.0
        y = x * x
        y.backward(client)
        assert (y.data, x.grad) == (9.0, 6.0)
        # The lost plan's digest is replaced; the other structure's is kept until it is used.
        assert list(client._steps.plans._digests.values()).count(b"\x01" * 16) == 1


def test_allow_non_finite_on_backward_evaluate_and_stream(target):
    with Client(target) as client:
        x = Value(1000.0)  # exp(1000) overflows
        with pytest.raises(GraphError, match="allow_non_finite"):
            x.exp().backward(client)
        y = x.exp()
        y.backward(client, allow_non_finite=True)
        assert y.data == math.inf and x.grad == math.inf
        assert client.evaluate(x.exp(), allow_non_finite=True).outputs.tolist() == [math.inf]
        (chunk,) = client.stream(x.exp(), wrt="all", allow_non_finite=True, progress=False)
        assert math.inf in chunk.values.tolist()


def test_a_closed_client_raises_a_gradserve_error(target):
    client = Client(target)
    client.close()
    with pytest.raises(ClientClosed, match="closed"):
        (Value(1.0) * 2).backward(client)
    with pytest.raises(GradserveError):
        client.ops()
    with pytest.raises(GradserveError):
        list(client.stream(Value(1.0) * 2, progress=False))


def test_refused_credentials_get_their_own_error(registry):
    with (
        running_server(registry, auth_token="s3cret") as server,
        Client(f"127.0.0.1:{server.port}") as client,
    ):
        with pytest.raises(AuthError, match="UNAUTHENTICATED") as raised:
            (Value(1.0) * 2).backward(client)
        assert isinstance(raised.value, GradserveError)


def test_rendering_without_dot_leaves_no_files(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(GraphvizNotFound):
        render(draw_dot(Value(1.0) * 2), tmp_path / "pic.svg")
    assert list(tmp_path.iterdir()) == []


def test_a_value_displays_as_its_drawing(used, monkeypatch):
    o = (Value(2.0, label="x") * Value(-3.0, label="w")).tanh()
    shown = o._repr_mimebundle_()
    if shutil.which("dot"):
        assert "<svg" in shown["image/svg+xml"] and "tanh" in shown["image/svg+xml"]
    assert shown["text/plain"] == repr(o)
    monkeypatch.setenv("PATH", "")  # no dot: the drawing is gone, the text stays the repr
    assert o._repr_mimebundle_() == {"text/plain": repr(o)}
    assert repr(o).startswith("Value(data=-0.99998")  # tanh(-6)


def test_a_closed_async_client_raises_a_gradserve_error(target):
    async def calls():
        client = AsyncClient(target)
        await client.close()
        with pytest.raises(ClientClosed):
            await (Value(1.0) * 2).backward(client)
        with pytest.raises(ClientClosed):
            [chunk async for chunk in client.stream(Value(1.0) * 2, progress=False)]

    asyncio.run(calls())


def test_reading_data_from_a_server_that_is_down(no_default, unused_target):
    gradserve.client.use(unused_target, timeout=5)
    y = Value(2.0) * 3
    with pytest.raises(ServerUnavailable):
        y.data  # noqa: B018 (the read is the test)
    assert repr(y).startswith(
        f"Value(data=<pending: no gradserve server answers at {unused_target}"
    )
