"""Draw a Value's graph as the notebook did: record nodes (label, data, grad) and op nodes.

Building the drawing needs only the ``graphviz`` Python package; the DOT text is always
available as ``.source``. Rendering to SVG or PNG needs Graphviz's ``dot`` program; where it
is missing the error says what to install, and a notebook shows the DOT text instead of
failing with ``ExecutableNotFound``. The ``graphviz`` package is an optional dependency
(``pip install 'gradserve-client[draw]'``); importing this module without it says so.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

try:
    import graphviz
except ImportError as error:  # the [draw] extra is not installed
    raise ImportError(
        "drawing needs the graphviz package: pip install 'gradserve-client[draw]'",
        name=error.name,
    ) from error

from gradserve.client import opcodes
from gradserve.client.errors import GraphvizNotFound, NoServerConfigured

if TYPE_CHECKING:  # a Value imports this module when it is drawn
    from gradserve.client.value import Value

INSTALL_HINT = (
    "rendering needs Graphviz's `dot` program on the PATH: install the graphviz system "
    "package (`apt-get install graphviz` on Debian/Ubuntu, `brew install graphviz` on macOS, "
    "or from https://graphviz.org/download/); the DOT text is in `.source` without it"
)


class Drawing(graphviz.Digraph):
    """A ``graphviz.Digraph`` that a notebook shows as DOT text when ``dot`` is missing."""

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        try:
            return super()._repr_mimebundle_(include, exclude, **kwargs)
        except graphviz.ExecutableNotFound:
            return {"text/plain": f"{INSTALL_HINT}\n\n{self.source}"}


_RECORD_SPECIALS = str.maketrans({c: "\\" + c for c in "{}|<>"})


def _record_text(value: "Value | None", remembered: tuple[float, float] | None) -> str:
    """The record label. An intermediate the program dropped shows the last backward's
    results; "?" means not evaluated yet."""
    label = "" if value is None else value.label.translate(_RECORD_SPECIALS)
    data = None if value is None else _data(value)
    if data is not None:
        data, grad = f"{data:.4f}", f"{value.grad:.4f}"
    elif remembered is not None:
        data, grad = (f"{x:.4f}" for x in remembered)
    else:
        data, grad = "?", "?"
    return f"{{ {label} | data {data} | grad {grad} }}"


def _data(value: "Value") -> float | None:
    """``.data``, evaluated on the default server if pending; None when pending and there is
    no default server (a drawing shows "?" then)."""
    try:
        return value.data
    except NoServerConfigured:
        return None


def draw_dot(root: "Value", rankdir: str = "LR", format: str = "svg") -> Drawing:
    """The graph ``root`` depends on, drawn left to right; one loop, no recursion."""
    dot = Drawing(format=format, graph_attr={"rankdir": rankdir})
    if root._tape is None:  # a lone leaf
        dot.node("n0", label=_record_text(root, None), shape="record")
        return dot
    sub = root._tape.subgraph([root._id])
    values = sub.values(np.arange(len(sub)))
    # Lines written directly (node names are plain identifiers, labels quoted here): a
    # Digraph.node call per node would cost several times more on large graphs.
    lines = dot.body
    start = 0
    for node, (op, count) in enumerate(zip(sub.codes.tolist(), sub.counts.tolist(), strict=True)):
        record = _record_text(values[node], sub.tape.result(int(sub.kept[node])))
        lines.append(f'\tn{node} [label="{_quoted(record)}" shape=record]\n')
        if op:
            lines.append(f'\tn{node}op [label="{_quoted(opcodes.symbol(op))}"]\n')
            lines.append(f"\tn{node}op -> n{node}\n")
            for i in sub.input_ids[start : start + count].tolist():
                lines.append(f"\tn{i} -> n{node}op\n")
        start += count
    return dot


def _quoted(text: str) -> str:
    """Text inside a DOT double-quoted string."""
    return text.replace('"', '\\"')


def render(drawing: graphviz.Digraph, path: str | Path) -> Path:
    """Render ``drawing`` to ``path`` (format from its suffix: .svg, .png, .pdf...).

    The DOT text goes to ``dot`` through a pipe, so no source file is left beside ``path``,
    and nothing at all is written when ``dot`` is missing."""
    path = Path(path)
    try:
        image = drawing.pipe(format=path.suffix.lstrip(".") or drawing.format)
    except graphviz.ExecutableNotFound:
        raise GraphvizNotFound(INSTALL_HINT) from None
    path.write_bytes(image)
    return path
