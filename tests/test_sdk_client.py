"""The synchronous client: evaluate, stream, ops, and what a training loop relies on."""

import asyncio
import dataclasses
import gc
import math
import tracemalloc

import pytest

import gradserve.client
from gradserve.client import AsyncClient, Client, Value
from gradserve.client.calls import evaluate_call, streams
from gradserve.client.subgraph import RecentStructures
from gradserve.client.tape import current_tape
from gradserve.v1 import gradserve_pb2 as pb


@pytest.fixture(scope="module")
def client(target):
    with Client(target) as client:
        yield client


def test_ops_lists_the_standard_ops(client):
    ops = {op.name: op for op in client.ops()}
    assert {"add", "mul", "pow", "tanh", "relu", "sum"} <= set(ops)
    assert ops["sum"].variadic and ops["sum"].arity is None
    assert ops["mul"].arity == 2
    # Plain Python objects, not protobuf messages: comparable, printable, asdict-able.
    mul = dataclasses.asdict(ops["mul"])
    assert mul["second_order"] is True and mul["distribution"] == "gradserve-ops-core"
    assert mul["doc"].startswith("a * b") and mul["entry_point"] == "mul"
    assert repr(ops["mul"]).startswith("OpInfo(name='mul', arity=2, variadic=False")
    with pytest.raises(dataclasses.FrozenInstanceError):  # read-only, and so hashable
        ops["mul"].arity = 3
    assert len({*ops.values(), *client.ops()}) == len(ops)


def test_evaluate_returns_results_without_touching_the_values(client):
    a, b = Value(2.0), Value(5.0)
    s, p = a + b, a * b
    result = client.evaluate([s, p], wrt=[b, a], seeds=[0.5, 2.0])
    assert result.outputs.tolist() == [7.0, 10.0]
    assert result.wrt == [b, a]
    assert result.values.tolist() == [5.0, 2.0]
    # d(0.5 s + 2 p)/db = 0.5 + 2a, /da = 0.5 + 2b
    assert result.grads.tolist() == [4.5, 10.5]
    assert (a.grad, b.grad, s._data, p._data) == (0.0, 0.0, None, None)  # still pending


def test_evaluate_defaults_to_the_leaves(client):
    x, w = Value(3.0, "x"), Value(-2.0, "w")
    y = (x * w + 1).relu() + x
    result = client.evaluate(y)
    assert result.wrt == [x, w]  # not the constant 1
    assert result.outputs.tolist() == [3.0]
    assert result.grads.tolist() == [1.0, 0.0]  # relu is off: dy/dx = 1, dy/dw = 0


def test_stream_yields_every_node_in_chunks(client):
    x = Value(0.5)
    y = x
    for _ in range(99):
        y = y * 1.01 + x
    chunks = list(client.stream(y, wrt="all", chunk_size=64, progress=False))
    assert [len(c.nodes) for c in chunks] == [64] * (chunks[0].total // 64) + [chunks[0].total % 64]
    assert chunks[-1].nodes[-1] is y
    assert chunks[-1].grads[-1] == 1.0
    assert chunks[0].nodes[0] is x
    # y = sum over k of x * 1.01^k (k = 0..99), so dy/dx = sum of 1.01^k
    assert chunks[0].grads[0] == pytest.approx(sum(1.01**k for k in range(100)), rel=1e-12)


def test_a_large_backward_streams_and_fills_every_value(target):
    x = Value(1.0)
    nodes = [x]
    for i in range(33_000):  # 66,001 nodes, more than a reply of 1 MiB holds: backward streams
        nodes.append(nodes[-1] + (i % 3))
    assert streams(len(nodes[-1]._tape), 2**20) and not streams(len(nodes[-1]._tape), 2**26)
    with Client(target, max_message_bytes=2**20) as client:
        sent = []
        client._evaluate_stream = lambda request, _send=client._evaluate_stream, **options: (
            sent.append(request) or _send(request, **options)
        )
        nodes[-1].backward(client)
        assert len(sent) == 1  # it streamed
    assert nodes[-1].data == 1.0 + sum(i % 3 for i in range(33_000))
    assert all(v.grad == 1.0 for v in nodes)
    assert nodes[20_000].data == 1.0 + sum(i % 3 for i in range(20_000))


def _train_step(client, params, xs, lr=0.05):
    w, b = params
    loss = sum(((w * x + b - (2 * x - 1)) ** 2 for x in xs), Value(0.0))
    loss.backward(client)
    for p in params:
        p.data -= lr * p.grad
    return loss.data


def test_a_training_loop_uses_updated_data_and_fresh_gradients(client):
    params = [Value(0.0, "w"), Value(0.0, "b")]
    xs = [-1.0, 0.0, 0.5, 1.0]
    losses = [_train_step(client, params, xs) for _ in range(200)]
    assert losses[-1] < 1e-6 < losses[0]
    assert params[0].data == pytest.approx(2.0, abs=1e-3)
    assert params[1].data == pytest.approx(-1.0, abs=1e-3)


def test_memory_does_not_grow_step_after_step(client):
    params = [Value(0.3), Value(-0.2)]
    xs = [i / 50 for i in range(50)]
    for _ in range(5):  # warm up caches (protobuf, grpc)
        _train_step(client, params, xs)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _train_step(client, params, xs)
        one_step_peak = tracemalloc.get_traced_memory()[1]
        # Collected before reading: CPython's free lists (thousands of spare tuples, floats)
        # count as traced memory too, and are no step's graph.
        gc.collect()
        after_one = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            _train_step(client, params, xs)
        gc.collect()
        after_many = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    graph_bytes = one_step_peak - before  # one step's graph and request, alive at once
    assert graph_bytes > 50_000
    # Keeping even a tenth of each step's graph would grow by 20 graphs in 200 steps.
    assert after_many - after_one < graph_bytes


def test_each_step_starts_a_new_tape(client):
    x = Value(1.0)
    first = x * 2
    first.backward(client)
    second = x * 3
    assert second._tape is not first._tape
    assert len(second._tape) == 3  # x, the constant 3, the product


def test_backward_sends_only_what_the_loss_depends_on(client):
    x = Value(2.0)
    loss = x * x
    side = x.apply("no_such_op")  # on the same tape, but the loss does not read it
    loss.backward(client)
    assert x.grad == 4.0
    assert side._data is None  # not evaluated


def test_a_node_on_a_tape_s_first_two_nodes_is_sent_with_its_leaf(client):
    """The sweep that marks what a loss reads goes down to node 0."""
    (Value(1.0) * 1.0).backward(client)  # that tape is sent: the next Values start a new one
    x = Value(0.5)
    t = x.tanh()  # nodes 0 and 1 of the new tape
    side = x.apply("no_such_op")  # node 2, which the loss does not read
    loss = t * 2.0
    loss.backward(client)
    assert t._id == 1 and side._data is None
    assert loss.data == 2.0 * math.tanh(0.5)
    assert x.grad == pytest.approx(2.0 * (1.0 - math.tanh(0.5) ** 2), rel=1e-15)


def test_reading_data_of_a_node_added_after_a_backward_evaluates_it(client, target):
    """The tape's remembered results grow with it (``.data`` on the default server)."""
    x = Value(2.0)
    y = x * 3.0
    y.backward(client)
    z = y * y  # on y's tape, which grows past the results its backward remembered
    gradserve.client.use(target)
    try:
        assert (z.data, y.grad) == (36.0, 1.0)
    finally:
        gradserve.client.use(None)


def test_graphs_built_apart_can_be_combined(client):
    a, b = Value(2.0), Value(3.0)
    big = a
    for _ in range(10):
        big = big * 1.0 + a  # big = 11 a, on one tape
    small = b * b  # a separate graph, on another tape once the first was sent
    client.evaluate(big)
    total = small + big  # reads both: one tape takes in the other
    total.backward(client)
    assert big._tape is small._tape is total._tape
    assert (total.data, a.grad, b.grad, big.grad) == (9.0 + 22.0, 11.0, 6.0, 1.0)


@pytest.mark.parametrize("large_first", [True, False])
def test_combining_two_graphs_appends_the_smaller_to_the_larger(client, large_first):
    """Whichever side of the op the larger graph is on, the smaller tape is appended to it,
    so its nodes keep their ids and a node is copied at most O(log n) times (recorder.py)."""
    a, b = Value(2.0), Value(3.0)
    large = a
    for _ in range(20):
        large = large * 1.0 + a  # 21 a, 42 nodes
    client.evaluate(large)  # its tape is sent: the next graph starts on another
    small = b * b
    large_tape, large_id, small_tape = large._tape, large._id, small._tape
    total = large * small if large_first else small * large
    assert total._tape is large_tape and small._tape is large_tape
    assert large._id == large_id and small_tape.sent  # the small tape was taken in
    total.backward(client)
    assert (total.data, a.grad, b.grad) == (42.0 * 9.0, 21.0 * 9.0, 42.0 * 6.0)


def test_an_intermediate_of_a_graph_taken_in_by_another_gets_its_results(client):
    """A step's graph, sent, then a new one; combining them moves the smaller tape's Values
    to the larger: the intermediates of both get their data and gradients."""
    a = Value(2.0)
    old = a * 3.0 + 1.0
    old.backward(client)  # its tape is sent; the next Values go on a new one
    b = Value(5.0)
    new = b * b
    assert new._tape is not old._tape
    total = old * new
    total.backward(client)
    assert new._tape is old._tape is total._tape
    assert (total.data, old.data, new.data) == (7.0 * 25.0, 7.0, 25.0)
    assert (old.grad, new.grad, a.grad, b.grad) == (25.0, 7.0, 75.0, 70.0)


def test_a_new_graph_of_leaves_only_shares_the_open_tape():
    a = Value(1.0)
    first, second = a * 2, a * 3
    assert first._tape is second._tape is current_tape()


def test_a_million_node_graph_is_recorded_and_pruned_without_recursion():
    x = Value(0.5)
    side = x.exp()  # recorded first but not read by y: forces the pruning sweep
    y = x
    for _ in range(500_000):  # y: 1,000,001 nodes in one long chain
        y = y.tanh() + x
    assert y._tape is side._tape and len(y._tape) == 1_000_002
    subgraph = y._tape.subgraph([y._id])
    assert len(subgraph) == 1_000_001
    assert subgraph.position(side._id) is None
    graph = pb.Graph.FromString(subgraph.graph(subgraph.leaf_values()))
    assert len(graph.node_ops) == 1_000_001
    assert list(graph.leaf_values) == [0.5]


def test_a_progress_bar_when_asked(client, capsys):
    x = Value(1.0)
    y = x + x
    list(client.stream(y, wrt="all", progress=True))
    err = capsys.readouterr().err
    assert "/2.00" in err and "node/s" in err  # a bar over the stream's total_nodes: x, x+x
    list(client.stream(y, wrt="all"))  # not a terminal: silent
    assert capsys.readouterr().err == ""


def test_a_backward_of_70_000_nodes_is_one_message_named_by_its_digest_the_second_time(target):
    """Results of up to 2**20 nodes fit one reply: a training step of that size is one
    message, and from its second step it sends only the plan digest and leaf values."""
    x, c = Value(1.0), Value(0.5)
    with Client(target) as client:
        sent = []
        send = client._send
        client._send = lambda request: (
            sent.append(pb.EvaluateRequest.FromString(request)) or (send(request))
        )
        for step in range(2):
            y = x
            for _ in range(70_000):
                y = y + c
            assert not streams(len(y._tape), 2**26) and len(y._tape) > 65_536
            y.backward(client)
            assert (y.data, x.grad, c.grad) == (1.0 + 0.5 * 70_000, 1.0, 70_000.0)
            assert len(sent) == step + 1
        assert sent[0].graph.node_ops and not sent[0].plan_digest
        assert sent[1].plan_digest and not sent[1].graph.node_ops


def test_a_graph_recorded_again_on_a_new_tape_shares_its_structure():
    """A training loop's next step finds the structure of its last (renumbering, columns,
    fingerprint) by the tape's columns; a tape differing in one op or one input does not."""

    def sent(record):
        a, b = Value(1.0), Value(2.0)
        y = record(a, b)
        y._tape.sent = True  # as a backward leaves it: the next graph starts a new tape
        return y._tape.subgraph([y._id]).structure

    first = sent(lambda a, b: (a * b * a).relu())
    assert sent(lambda a, b: (a * b * a).relu()) is first
    assert sent(lambda a, b: (a * b * b).relu()) is not first
    assert sent(lambda a, b: (a + b * a).relu()) is not first
    assert not first.kept.flags.writeable and not first.input_ids.flags.writeable


def test_the_structures_kept_hold_at_most_max_nodes_the_least_recently_used_going_first():
    def chain(length: int):
        y = Value(1.0)
        for _ in range(length):
            y = y.tanh()
        y._tape.sent = True
        return y._tape, [y._id]

    recent = RecentStructures()
    third = RecentStructures.MAX_NODES // 3
    tapes = [chain(third - 1) for _ in range(3)]  # the same structure on three tapes
    recent.keep(*tapes[0], tapes[0][0].subgraph(tapes[0][1]).structure)
    assert recent.find(*tapes[1]) is not None and recent.find(*tapes[2]) is not None
    other, big = chain(third), chain(RecentStructures.MAX_NODES)
    assert recent.find(*other) is None
    recent.keep(*other, other[0].subgraph(other[1]).structure)
    recent.find(*tapes[0])  # used: now the most recent
    newest = chain(third + 1)
    recent.keep(*newest, newest[0].subgraph(newest[1]).structure)
    assert recent.find(*other) is None  # the least recently used went to make room
    assert recent.find(*tapes[0]) is not None and recent.find(*newest) is not None
    recent.keep(*big, big[0].subgraph(big[1]).structure)  # more than MAX_NODES: not kept
    assert recent.find(*big) is None and recent.find(*newest) is not None


def test_structures_of_the_same_node_count_are_sent_as_different_plans(target):
    """Steps of three structures of four nodes each, one differing from the first only in an
    input and one only in an op, go whole the first time and by three different plan digests
    the second: each step's results are its own structure's (closed forms)."""
    structures = [
        (lambda a, b: a * b * a, lambda a, b: (a * a * b, 2 * a * b, a * a)),
        (lambda a, b: a * b * b, lambda a, b: (a * b * b, b * b, 2 * a * b)),
        (lambda a, b: (a + b) * a, lambda a, b: (a * a + a * b, 2 * a + b, a)),
    ]
    with Client(target) as client:
        sent = []
        send = client._send
        client._send = lambda request: (
            sent.append(pb.EvaluateRequest.FromString(request)) or (send(request))
        )
        for step, (record, expected) in enumerate(structures * 2):
            a, b = Value(3.0 + step), Value(-2.0 - step)
            y = record(a, b)
            assert len(y._tape) == 4
            y.backward(client)
            assert (y.data, a.grad, b.grad) == expected(3.0 + step, -2.0 - step)
    assert all(m.graph.node_ops and not m.plan_digest for m in sent[:3])
    assert all(m.plan_digest and not m.graph.node_ops for m in sent[3:])
    assert len({m.plan_digest for m in sent[3:]}) == 3


@pytest.mark.parametrize("not_a_value", [3.0, "x", None])
def test_outputs_and_wrt_that_are_not_values_are_refused_before_calling(not_a_value):
    """A number, a string or None among the outputs or wrt is a TypeError naming it, raised
    while the request is built (no server is needed to see it)."""
    x = Value(2.0)
    y = x * x
    for outputs, wrt in (([y, not_a_value], [x]), ([y], [x, not_a_value])):
        with pytest.raises(TypeError, match=f"expected Values, got {not_a_value!r}"):
            evaluate_call(outputs, wrt)


def test_the_target_may_be_named_and_every_option_must_be():
    """``Client(target, 5.0)`` is a TypeError rather than a timeout taken by position."""
    Client(target="127.0.0.1:1").close()
    with pytest.raises(TypeError):
        Client("127.0.0.1:1", 5.0)

    async def the_async_client():
        await AsyncClient(target="127.0.0.1:1").close()
        with pytest.raises(TypeError):
            AsyncClient("127.0.0.1:1", 5.0)

    asyncio.run(the_async_client())
