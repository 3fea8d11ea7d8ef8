"""Which recording core the SDK uses: the compiled one, or the Python fallback.

The compiled core (``compiled_recorder``, Cython) is built when the package installs where a C
compiler is present; ``recorder`` is the same in Python. ``GRADSERVE_PURE_PYTHON=1`` picks
the Python core even where the compiled one is installed (the tests run the SDK's suite
against both). Results are the same bit for bit: the cores only record the graph, and the
server computes.
"""

import os

if os.environ.get("GRADSERVE_PURE_PYTHON", "") in ("", "0"):
    try:
        from gradserve.client import compiled_recorder as core
    except ImportError:  # built without a C compiler: the Python core
        from gradserve.client import recorder as core
else:
    from gradserve.client import recorder as core

COMPILED: bool = core.COMPILED

__all__ = ["COMPILED", "core"]
