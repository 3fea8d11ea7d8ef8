"""An op plugin that always fails, so that the conformance suite can see INTERNAL.

The conformance server finds it through this folder on PYTHONPATH (the dist-info beside it
declares the entry point); no package is installed.
"""

from gradserve.ops import Op


def _forward(x):
    raise RuntimeError("conformance_fail always fails (on purpose)")


def _backward(g, y, x):
    return (g,)


conformance_fail = Op(
    "conformance_fail",
    1,
    forward=_forward,
    backward=_backward,
    doc="Always raises: the conformance suite's op plugin failure (INTERNAL).",
)
