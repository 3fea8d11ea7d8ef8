"""The engine's one entry for evaluating a plan: ``run(plan, inputs, should_stop)``.

The service decodes a request into ``Inputs`` once and calls ``run``; the isolation workers
(``runtime/isolation.py``) call the same function on their side of the pipe. Which
evaluation runs is decided here: forward and reverse mode (``evaluate``), or with leaf
tangents forward-over-reverse as well (``second_order``); inside them, groups, chains on
floats or arrays, and batch rows are the engine's own business.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradserve.server.engine.evaluate import evaluate
from gradserve.server.engine.plan import Plan, never_stop
from gradserve.server.engine.second_order import evaluate_with_tangents


@dataclass(frozen=True)
class Inputs:
    """What one evaluation of a plan needs from a request: the leaf values (one row of
    shape ``(L,)`` or rows ``(B, L)``), the outputs and their seeds, the leaf tangents (the
    leaf values' shape) or None, and whether NaN and Inf may pass."""

    leaves: np.ndarray
    outputs: np.ndarray
    seeds: np.ndarray
    tangents: np.ndarray | None = None
    allow_non_finite: bool = False

    def rows(self, block: slice) -> "Inputs":
        """The same inputs for a block of rows."""
        tangents = None if self.tangents is None else self.tangents[block]
        return Inputs(self.leaves[block], self.outputs, self.seeds, tangents, self.allow_non_finite)


def run(
    plan: Plan, inputs: Inputs, should_stop: Callable[[], bool] = never_stop
) -> tuple[np.ndarray, ...]:
    """Every node's values and gradients, and with leaf tangents their value and gradient
    tangents after them, shaped as the leaves' rows (``(n,)`` or ``(n, B)``)."""
    if inputs.tangents is not None:
        return evaluate_with_tangents(
            plan,
            inputs.leaves,
            inputs.tangents,
            inputs.outputs,
            inputs.seeds,
            should_stop,
            inputs.allow_non_finite,
        )
    return evaluate(
        plan, inputs.leaves, inputs.outputs, inputs.seeds, should_stop, inputs.allow_non_finite
    )
