"""Every script in examples/ runs against a local server and prints what it promises."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_every_example_is_tested():
    tested = {
        *("notebook_expression.py", "notebook_neuron.py", "draw_graph.py", "mlp_two_moons.py"),
        "newton.py",
    }
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_notebook_expression(target):
    result = run("notebook_expression.py", "--target", target)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "a: data 5, grad 10",
        "b: data 3, grad 10",
        "c: data 8, grad 10",
        "d: data 10, grad 8",
        "e: data 80, grad 1",
    ]


def test_notebook_neuron(target):
    result = run("notebook_neuron.py", "--target", target)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "x1: data 2.0000, grad -1.5000" in lines
    assert "w1: data -3.0000, grad 1.0000" in lines
    assert "o: data 0.7071, grad 1.0000" in lines


def test_mlp_loss_falls(target):
    result = run("mlp_two_moons.py", "--target", target, "--steps", "15", "--points", "40")
    assert result.returncode == 0, result.stderr
    losses = [float(x) for x in re.findall(r"loss (\S+)", result.stdout)]
    assert len(losses) == 15
    assert losses[-1] < 0.8 * losses[0]


def test_newton_converges_in_a_handful_of_steps(target):
    result = run("newton.py", "--target", target)
    assert result.returncode == 0, result.stderr
    steps = re.findall(r"step (\d+): x (\S+), y (\S+), \|grad\| (\S+)", result.stdout)
    norms = [float(norm) for *_, norm in steps]
    assert len(steps) <= 8 and norms[-1] < 1e-12  # from (-1, 1): quadratic convergence
    # Quadratic convergence near the minimum: each norm below 10x the square of the last.
    pairs = zip(norms[-4:-1], norms[-3:], strict=True)
    assert all(after < 10 * before**2 for before, after in pairs)
    x, y = float(steps[-1][1]), float(steps[-1][2])
    assert abs(x - -math.log(2) / 2) < 1e-12 and abs(y) < 1e-12


@pytest.mark.requires_tool("dot")
def test_draw_graph_writes_an_svg(target, tmp_path):
    result = run("draw_graph.py", str(tmp_path / "neuron.svg"), "--target", target)
    assert result.returncode == 0, result.stderr
    svg = (tmp_path / "neuron.svg").read_text()
    assert "<svg" in svg and "tanh" in svg and "x1" in svg


def test_draw_graph_without_dot_says_what_to_install(target, tmp_path):
    result = run(
        "draw_graph.py", str(tmp_path / "neuron.svg"), "--target", target, env={"PATH": ""}
    )
    assert result.returncode == 1
    assert "apt-get install graphviz" in result.stderr
    assert "digraph" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "neuron.svg").exists()
