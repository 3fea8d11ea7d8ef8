"""draw_dot: DOT text always, rendering where Graphviz's dot is installed, clear errors if not."""

import time

import pytest

from gradserve.client import Client, GraphvizNotFound, Value, draw_dot, render


def _neuron():
    x1, w1 = Value(2.0, "x1"), Value(-3.0, "w1")
    n = x1 * w1 + Value(6.8813735870195432, "b")
    n.label = "n"
    o = n.tanh()
    o.label = "o"
    return o, n


def test_the_dot_source_needs_no_binary(monkeypatch, target):
    monkeypatch.setenv("PATH", "")
    o, _n = _neuron()  # keeps n alive: a dropped Value's label is not drawn
    with Client(target) as client:
        o.backward(client)
    drawing = draw_dot(o)
    source = drawing.source
    assert "rankdir=LR" in source
    assert '"{ o | data 0.7071 | grad 1.0000 }"' in source
    assert '"{ n | data 0.8814 | grad 0.5000 }"' in source
    # Op nodes named as Value._op names them (micrograd's notebook: "*", "+", "tanh").
    assert 'n2op [label="*"]' in source and 'n4op [label="+"]' in source
    assert 'n5op [label="tanh"]' in source
    assert source.count("shape=record") == 6  # x1, w1, x1*w1, b, n, o
    assert source.count("->") == (2 + 1) + (2 + 1) + (1 + 1)  # mul, add, tanh: in and out


def test_rendering_without_the_binary_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "")
    drawing = draw_dot(_neuron()[0])
    with pytest.raises(GraphvizNotFound, match="apt-get install graphviz"):
        render(drawing, tmp_path / "graph.svg")
    shown = drawing._repr_mimebundle_()  # what a notebook shows instead of a traceback
    assert "apt-get install graphviz" in shown["text/plain"]
    assert "digraph" in shown["text/plain"]


@pytest.mark.requires_tool("dot")
def test_rendering_with_the_binary(tmp_path):
    drawing = draw_dot(_neuron()[0])
    svg = render(drawing, tmp_path / "graph.svg")
    assert svg.read_text().lstrip().startswith("<?xml")
    assert "tanh" in svg.read_text()
    png = render(drawing, tmp_path / "graph.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "image/svg+xml" in drawing._repr_mimebundle_()


def test_intermediates_the_program_dropped_show_the_last_results(target):
    a = Value(3.0)
    b = a * 2  # reassigned below: the drawing has only the tape's record of it
    b = b + 1
    with Client(target) as client:
        b.backward(client)
    source = draw_dot(b).source
    assert "data 6.0000 | grad 1.0000" in source
    assert "data 7.0000 | grad 1.0000" in source


def test_a_100k_node_graph_draws_without_recursion():
    x = Value(0.5)
    y = x
    for _ in range(100_000):  # 100,001 nodes: a deep chain recursion could not walk
        y = y.tanh()
    started = time.perf_counter()
    source = draw_dot(y).source
    assert time.perf_counter() - started < 60
    assert source.count("shape=record") == 100_001
    assert source.count('[label="tanh"]') == 100_000
