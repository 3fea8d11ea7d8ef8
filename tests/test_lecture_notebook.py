"""examples/lecture.ipynb, executed in a Jupyter kernel against a live server."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "lecture.ipynb"


def test_the_notebook_is_committed_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


@pytest.fixture
def executed(target, monkeypatch):
    monkeypatch.setenv("GRADSERVE_TARGET", target)  # the kernel inherits it
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _text(cell) -> str:
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", ""))
        parts.extend(str(v) for v in output.get("data", {}).values())
    return "\n".join(parts)


def test_the_lecture_runs_and_its_loss_falls(executed):
    def cell(start: str):
        (found,) = [cell for cell in executed if cell.source.startswith(start)]
        return found

    expression = _text(cell("a = Value(2.0"))
    assert "Value(data=-8.0, grad=0.0, label='L')" in expression
    assert "label='d'" in expression and "label='f'" in expression  # L._prev
    assert "6.0 -4.0 -2.0 4.0" in _text(cell("L.backward()"))
    assert "o = 0.7071, do/dw1 = 1.0000, do/dx1 = -1.5000" in _text(cell("x1 = Value(2.0"))
    lines = _text(cell("xs = [[2.0")).split()
    losses = [float(x) for x in lines[1::2]]
    assert len(losses) == 20 and losses[-1] < losses[0]
    # A Value, and draw_dot's result, display as drawings: SVG with Graphviz's dot, else DOT
    # text for draw_dot's result and the repr for a Value.
    drawn = cell("draw_dot(L)").outputs[0]["data"]
    shown = cell("model(xs[0])").outputs[0]["data"]
    assert shown["text/plain"].startswith("Value(data=")
    if shutil.which("dot"):
        assert "8.0000" in drawn["image/svg+xml"] and "relu" in shown["image/svg+xml"]
    else:
        assert "8.0000" in drawn["text/plain"]
