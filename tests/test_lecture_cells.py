"""micrograd's lecture notebook, its own cells (tests/lecture_cells.py), against gradserve."""

import math
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUN_IN_IPYTHON = """
import sys
from IPython.core.interactiveshell import InteractiveShell
from lecture_cells import CELLS

shell = InteractiveShell.instance()
for cell in CELLS:
    shell.run_cell(cell).raise_error()
# What the notebook showed as a picture: its own draw_dot of the exp neuron, as DOT text.
print("DRAWING", shell.user_ns["draw_dot"](shell.user_ns["o"]).source.replace("\\n", " "))
"""


def test_the_lectures_cells_run_with_only_the_import_changed(target):
    env = {**os.environ, "GRADSERVE_TARGET": target, "PYTHONPATH": str(HERE)}
    done = subprocess.run(
        [sys.executable, "-c", RUN_IN_IPYTHON],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=HERE,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Value(data=-8.0, grad=0.0, label='L')" in out
    assert "grads 6.0 -4.0 -2.0 4.0" in out  # L = (a b + c) f
    drawing = out.split("DRAWING", 1)[1]
    # 5 leaves, 3 constants (2, 1, 1) and 9 op nodes: x1*w1, x2*w2, +, n, 2*n, exp, -, +, /
    assert drawing.count("shape=record") == 17 and "data 0.7071 | grad 1.0000" in drawing
    assert drawing.count('label="*"') == 3 and drawing.count('label="+"') == 3
    assert "label=exp" in drawing and "label=div" in drawing and "label=sub" in drawing
    lines = out.splitlines()
    grads = lines.index("grads 6.0 -4.0 -2.0 4.0")
    slope, nudged = float(lines[grads - 1]), float(lines[grads + 1])
    assert abs(slope - 6.0) < 1e-2  # the lecture's finite difference of L in a: b f = 6
    # The nudge x += 0.01 dL/dx of a, b, c and f raises L from -8.
    assert abs(nudged - (2.06 * -3.04 + 9.98) * -1.96) < 1e-9
    # tanh(x1 w1 + x2 w2 + b): do/dx1 = w1 (1 - o^2), do/dw1 = x1 (1 - o^2), do/dx2 = w2 (..)
    o = math.tanh(2.0 * -3.0 + 6.8813735870195432)
    expected = f"neuron {o:.4f} {-3.0 * (1 - o * o):.4f} {2.0 * (1 - o * o):.4f}"
    assert expected + f" {1.0 * (1 - o * o):.4f} {0.0:.4f}" in out
    assert f"exp neuron {o:.4f} {-3.0 * (1 - o * o):.4f} {2.0 * (1 - o * o):.4f}" in out
    for loop in ("lecture", "nn"):
        losses = [float(x.split()[2]) for x in lines if x.startswith(f"{loop} ")]
        assert len(losses) == 20 and losses[-1] < losses[0] / 2, (loop, losses)
    assert "MLP of [Layer of [ReLUNeuron(3)" in out
