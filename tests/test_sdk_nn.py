"""``gradserve.client.nn`` against micrograd's own ``nn`` (installed with the bench extra), the
oracle it promises to be: drawn from the same random seed, each model has the same
parameters, the same structure (its repr), the same outputs and, after a backward on the
server, the same gradients as micrograd's pure-Python autograd computes."""

import random

import micrograd.nn
import pytest

from gradserve.client import Client, Value, nn

# (inputs, layer sizes): one neuron, one layer of several, the README's MLP, a deeper one.
SHAPES = [(1, [1]), (3, [4]), (3, [4, 4, 1]), (2, [3, 2, 2, 1])]


def _twins(nin: int, nouts: list[int], seed: int):
    """The same model from each package, their weights drawn from the same random stream."""
    random.seed(seed)
    ours = nn.MLP(nin, nouts)
    random.seed(seed)
    theirs = micrograd.nn.MLP(nin, nouts)
    return ours, theirs


def _outputs(model_output) -> list:
    return model_output if isinstance(model_output, list) else [model_output]


@pytest.mark.parametrize(("nin", "nouts"), SHAPES)
def test_a_model_is_micrograds_parameter_for_parameter(nin, nouts):
    ours, theirs = _twins(nin, nouts, seed=nin * 10 + len(nouts))
    assert repr(ours) == repr(theirs)
    ours_params, their_params = ours.parameters(), theirs.parameters()
    assert [p.data for p in ours_params] == [p.data for p in their_params]
    assert all(type(p) is Value and p._tape is None for p in ours_params)  # leaves
    # Every bias starts at 0 and every weight inside [-1, 1], as micrograd draws them.
    for layer in ours.layers:
        for neuron in layer.neurons:
            assert neuron.b.data == 0.0
            assert all(-1.0 <= w.data <= 1.0 for w in neuron.w)
    # ReLU everywhere but in the last layer.
    kinds = [[n.nonlin for n in layer.neurons] for layer in ours.layers]
    assert kinds == [[i != len(nouts) - 1] * size for i, size in enumerate(nouts)]


@pytest.mark.parametrize(("nin", "nouts"), SHAPES)
def test_outputs_and_gradients_are_micrograds(target, nin, nouts):
    """A squared-error loss over a few inputs: outputs, loss and every parameter's gradient
    as micrograd computes them, through one backward on the server."""
    ours, theirs = _twins(nin, nouts, seed=100 + nin)
    rng = random.Random(nin)
    xs = [[rng.uniform(-2, 2) for _ in range(nin)] for _ in range(4)]
    their_outputs = [_outputs(theirs(x)) for x in xs]
    their_loss = sum((o - 0.5) ** 2 for outputs in their_outputs for o in outputs)
    their_loss.backward()
    our_outputs = [_outputs(ours(x)) for x in xs]
    assert [len(o) for o in our_outputs] == [len(o) for o in their_outputs]
    our_loss = sum((o - 0.5) ** 2 for outputs in our_outputs for o in outputs)
    with Client(target) as client:
        our_loss.backward(client)
    assert our_loss.data == pytest.approx(their_loss.data, rel=1e-12)
    for got, expected in zip(our_outputs, their_outputs, strict=True):
        assert [o.data for o in got] == pytest.approx([o.data for o in expected], rel=1e-12)
    our_grads = [p.grad for p in ours.parameters()]
    their_grads = [p.grad for p in theirs.parameters()]
    assert our_grads == pytest.approx(their_grads, rel=1e-12, abs=1e-15)
    assert any(g != 0.0 for g in our_grads)

    ours.zero_grad()
    assert [p.grad for p in ours.parameters()] == [0] * len(our_grads)


def test_a_layer_of_one_neuron_gives_a_value_and_of_several_a_list():
    one, several = nn.Layer(2, 1), nn.Layer(2, 3, nonlin=False)
    assert isinstance(one([1.0, 2.0]), Value)
    out = several([1.0, 2.0])
    assert isinstance(out, list) and len(out) == 3
    assert repr(several) == "Layer of [LinearNeuron(2), LinearNeuron(2), LinearNeuron(2)]"
    assert repr(one) == "Layer of [ReLUNeuron(2)]"
    assert nn.Module().parameters() == []


def test_a_neuron_reads_as_many_inputs_as_it_has_weights_as_micrograds_does(target):
    """micrograd zips weights with inputs: extra inputs are ignored, too few leave weights
    unused. The same here, so its programs run unchanged."""
    random.seed(7)
    ours = nn.Neuron(2, nonlin=False)
    random.seed(7)
    theirs = micrograd.nn.Neuron(2, nonlin=False)
    for x in ([1.5, -2.0, 4.0], [3.0]):
        out = ours(x)
        with Client(target) as client:
            out.backward(client)
        assert out.data == pytest.approx(theirs(x).data, rel=1e-12)


@pytest.mark.parametrize("nonlin", [True, False])
def test_a_neuron_records_micrograds_sum_node_for_node(nonlin):
    """A neuron's graph is the one micrograd's expression records, ``sum((wi * xi for wi,
    xi in zip(w, x)), b)``, written out here: the same ops on the same inputs in the same
    order, so the server adds in micrograd's order."""
    neuron = nn.Neuron(3, nonlin=nonlin)
    x = [0.5, Value(-1.5), 2.0]
    ours = neuron(x)
    ours._tape.sent = True  # the next graph starts a tape of its own
    theirs = sum((wi * xi for wi, xi in zip(neuron.w, x, strict=True)), neuron.b)
    theirs = theirs.relu() if nonlin else theirs
    assert ours._tape is not theirs._tape
    assert ours._tape.columns() == theirs._tape.columns()
    assert len(ours._tape) == 3 + 3 + 1 + 3 + 3 + nonlin  # leaves, products, b, sums, relu
