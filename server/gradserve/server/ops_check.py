"""``gradserve ops check``: gradient-check every loaded op, one line per op."""

import sys
from collections.abc import Mapping
from typing import TextIO

from gradserve.ops.gradcheck import gradcheck
from gradserve.server.registry import LoadedOp


def check_ops(
    registry: Mapping[str, LoadedOp],
    *,
    points: int = 200,
    seed: int = 0,
    out: TextIO = sys.stdout,
) -> int:
    """Print a gradcheck line per op (with the distribution that supplied it and the form it
    is written in: formulas or functions); 0 if all pass."""
    failures = 0
    for _, loaded in sorted(registry.items()):
        result = gradcheck(loaded.op, points=points, seed=seed)
        failures += not result.ok
        print(f"{result}  [{loaded.distribution} {loaded.version}] {result.form}", file=out)
    print(f"{len(registry) - failures} of {len(registry)} ops passed", file=out)
    return 1 if failures else 0
