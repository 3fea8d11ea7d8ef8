"""Timing statistics, agreement checks and the results a report is made of."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# Two results agree when |ours - theirs| <= ATOL + RTOL * |theirs| everywhere. Peers sum in
# other orders and compute tanh' differently (1 - t^2 against 1 / cosh^2), so results differ
# in the last bits; a real bug differs by far more.
RTOL, ATOL = 1e-7, 1e-10
TOLERANCE = f"|a - b| <= {ATOL:g} + {RTOL:g} |b|"


def within_tolerance(ours: np.ndarray, theirs: np.ndarray) -> bool:
    return ours.shape == theirs.shape and bool(
        np.all(np.abs(ours - theirs) <= ATOL + RTOL * np.abs(theirs))
    )


def timed(function: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(seconds, q)) * 1e3


@dataclass
class Row:
    """One line of the results table."""

    workload: str
    measurement: str
    value: str
    comparison: str = ""
    target: str = ""
    result: str = ""  # PASS, FAIL, SKIP, or empty when there is no target


@dataclass
class Report:
    """Everything one run of the harness measured, checked and noted."""

    rows: list[Row] = field(default_factory=list)
    agreements: list[tuple[str, str, float, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, *fields: str) -> None:
        self.rows.append(Row(*fields))

    def target(
        self,
        workload: str,
        measurement: str,
        value: str,
        comparison: str,
        target: str,
        passed: bool,
    ) -> None:
        self.rows.append(
            Row(workload, measurement, value, comparison, target, "PASS" if passed else "FAIL")
        )

    def agree(self, workload: str, what: str, ours: np.ndarray, theirs: np.ndarray) -> None:
        """Record whether ``ours`` matches ``theirs`` within the tolerance, and how closely."""
        ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        if ours.shape != theirs.shape:
            self.agreements.append(
                (workload, f"{what} (shapes {ours.shape}, {theirs.shape})", np.inf, False)
            )
            return
        worst = float(np.max(np.abs(ours - theirs) / (ATOL + RTOL * np.abs(theirs)), initial=0))
        self.agreements.append((workload, what, worst, within_tolerance(ours, theirs)))

    @property
    def all_agree(self) -> bool:
        return all(ok for *_, ok in self.agreements)
