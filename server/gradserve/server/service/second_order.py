"""Requests with leaf tangents (JVPs and HVPs): decoded, evaluated on the array path, and
the selected nodes' four results returned.

They never take the small-call path (floats only, first order) and go to an isolation
worker when the plan uses untrusted ops, like first-order calls.
"""

from collections.abc import Callable

import numpy as np

from gradserve.server.engine.plan import Plan
from gradserve.server.engine.second_order import evaluate_with_tangents, require_second_order
from gradserve.server.runtime.isolation import IsolatedEvaluator
from gradserve.server.service import wire
from gradserve.v1 import gradserve_pb2 as pb


def evaluate(
    plan: Plan,
    request: pb.EvaluateRequest,
    should_stop: Callable[[], bool],
    isolated: IsolatedEvaluator | None,
) -> tuple[np.ndarray, ...]:
    """The selected ids and their values, grads, value tangents and grad tangents, each
    shaped (len(ids), rows)."""
    require_second_order(plan)  # before any work, and before sending work to a worker
    outputs, seeds = wire.outputs_and_seeds(request, plan)
    selected = wire.selected_nodes(request, plan)
    leaves = wire.leaf_rows(request, plan)
    tangents = wire.leaf_tangent_rows(request, plan)
    allow_non_finite = request.allow_non_finite
    if plan.source is not None:
        results = isolated.evaluate(
            plan.source, leaves, outputs, seeds, should_stop, allow_non_finite, tangents
        )
    else:
        results = evaluate_with_tangents(
            plan, leaves, tangents, outputs, seeds, should_stop, allow_non_finite
        )
    return (selected, *(result.take(selected, axis=0) for result in results))
