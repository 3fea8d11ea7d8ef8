"""Check an op's backward against central finite differences of its forward.

Plugin authors can use this without a server::

    from gradserve.ops.gradcheck import gradcheck
    result = gradcheck(my_op)
    assert result.ok, result

Test points are drawn at random (float64, reproducible with ``seed``; a quarter of them on
the integers, where kinks and ties usually are, so that skipping them is exercised). A point
is kept only where each input, moved by ``KINK_STEP`` (relative) either way, stays inside the
op's ``domain`` with a finite forward, and where the one-sided slopes over that step agree:
near a kink (relu at 0, a tie of max or min) they disagree and finite differences mean
nothing, while a smooth function's agree. A variadic op is checked with ``VARIADIC_INPUTS``
inputs. Each analytic gradient is computed for a random upstream gradient
``g``, so a backward that forgets to multiply by ``g`` fails. The tolerances are those of
PyTorch's ``gradcheck``: ``|analytic - numeric| <= atol + rtol * |numeric|``.

An op with a scalar forward also has it compared with its array forward, at the same points
and at every combination of ``SPECIAL_VALUES`` inside the domain (infinities, NaN, signed
zeros, the edges of exp's range): the two must give the same value, NaN where the other
gives NaN, or values at most ``SCALAR_ULPS`` units in the last place apart (``math.tanh``
and ``np.tanh`` differ by up to 3). Where the scalar forward raises an ArithmeticError or
ValueError, the engine uses the array forward, so such points pass.

An op with a scalar backward has it compared with its array backward in the same way, at the
same points (with random upstream gradients) and special values: the gradients must agree
input by input to within ``SCALAR_BACKWARD_ULPS``, and points where it raises an ArithmeticError or
ValueError pass (the engine then evaluates the call with the array functions).

An op written as formulas (``gradserve.ops.formulas``) also has its formulas run directly on
NumPy (``formulas.ARRAY``) and compared with its rendered array code, which must give the
same bits (NaN where the other gives NaN): a function that the emitter renders wrongly shows
here. ``form`` says which form the op is written in.

An op with second derivatives (``second``) has each ``d2y/dxi dxj`` compared with central
finite differences of its backward (with an upstream gradient of 1) along ``xj``, with the
same step and tolerances, at the points where the backward is smooth too (its one-sided
slopes over ``KINK_STEP`` agree): ``second_points`` says at how many.
"""

import itertools
import math
from dataclasses import dataclass

import numpy as np

from gradserve.ops.contract import Op
from gradserve.ops.formulas import ARRAY, Formulas

STEP = 1e-6  # finite-difference step, relative to max(1, |x|)
KINK_STEP = 1e-3  # wider step whose one-sided slopes must agree at a smooth point
ATOL = 1e-5
RTOL = 1e-3
VARIADIC_INPUTS = 3  # how many inputs a variadic op is checked with
SCALAR_ULPS = 4  # how far apart a scalar forward and the array forward may round
# A backward's formula compounds its functions' differences: math.cosh and np.cosh differ by
# up to an ulp, which 1 / cosh(x)^2 turns into up to 6 (measured over a million points).
SCALAR_BACKWARD_ULPS = 8
SPECIAL_VALUES = (
    *(0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 3.0),
    *(math.inf, -math.inf, math.nan, 1e308, -1e308, 5e-324, 1e-300, 710.0, -746.0),
)
_SAMPLING_ROUNDS = 20


class _Broken(Exception):
    """The op's forward or backward raised or returned something malformed."""


@dataclass(frozen=True)
class GradcheckResult:
    """The outcome for one op. The worst point is the one whose error is the largest share
    of its tolerance: ``worst_error`` is |analytic - numeric| there, ``worst_share`` that
    error over the tolerance (above 1 fails), ``worst_point`` the inputs. ``problem`` says
    why the op failed, if it did."""

    op: str
    ok: bool
    points: int
    worst_error: float = np.nan
    worst_share: float = np.nan
    worst_point: tuple[float, ...] | None = None
    problem: str = ""
    second_points: int = 0
    form: str = "functions"

    def __str__(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        if self.worst_point is None:
            return f"{status} {self.op:<12} {self.problem}"
        line = (
            f"{status} {self.op:<12} worst |analytic - numeric| = {self.worst_error:.2e}"
            f" ({self.worst_share:.2g} of tolerance)"
        )
        line += " at (" + ", ".join(f"{x:.6g}" for x in self.worst_point) + ")"
        line += f" over {self.points} points"
        if self.second_points:
            line += f", second derivatives at {self.second_points}"
        return line + (f": {self.problem}" if self.problem else "")


def _arrays(phase: str, results, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The op's results as float64 arrays of ``shape``, or _Broken saying what is wrong."""
    for r in results:
        if not isinstance(r, np.ndarray) or r.dtype.kind not in "fiu" or r.shape != shape:
            what = f"{r.dtype} {r.shape}" if isinstance(r, np.ndarray) else type(r).__name__
            raise _Broken(f"{phase} returned {what}, expected float64 {shape}")
    return [r.astype(np.float64, copy=False) for r in results]


def _forward(op: Op, xs: list[np.ndarray]) -> np.ndarray:
    try:
        with np.errstate(all="ignore"):
            y = op.forward(*xs)
    except Exception as exc:
        raise _Broken(f"forward raised {exc!r}") from exc
    return _arrays("forward", [y], xs[0].shape)[0]


def _backward(op: Op, g: np.ndarray, y: np.ndarray, xs: list[np.ndarray]) -> list[np.ndarray]:
    try:
        with np.errstate(all="ignore"):
            grads = op.backward(g, y, *xs)
    except Exception as exc:
        raise _Broken(f"backward raised {exc!r}") from exc
    if not isinstance(grads, tuple | list) or len(grads) != len(xs):
        raise _Broken(f"backward must return {len(xs)} gradient(s), one per input")
    return _arrays("backward", grads, xs[0].shape)


def _inside(op: Op, xs: list[np.ndarray]) -> np.ndarray:
    if op.domain is None:
        return np.ones(xs[0].shape, dtype=bool)
    try:
        with np.errstate(all="ignore"):
            inside = np.asarray(op.domain(*xs), dtype=bool)
    except Exception as exc:
        raise _Broken(f"domain raised {exc!r}") from exc
    if inside.shape != xs[0].shape:
        raise _Broken(f"domain returned shape {inside.shape}, expected {xs[0].shape}")
    return inside


def _shifted(xs: list[np.ndarray], i: int, delta: np.ndarray) -> list[np.ndarray]:
    return [x + delta if k == i else x for k, x in enumerate(xs)]


def _smooth_points(op: Op, xs: list[np.ndarray]) -> np.ndarray:
    """Mask of the candidate points where finite differences of ``op`` can be trusted."""
    y = _forward(op, xs)
    keep = _inside(op, xs) & np.isfinite(y)
    for i, x in enumerate(xs):
        scale = np.maximum(1.0, np.abs(x))
        wide = KINK_STEP * scale
        ahead, behind = (_shifted(xs, i, s * wide) for s in (1.0, -1.0))
        keep &= _inside(op, ahead) & _inside(op, behind)
        with np.errstate(all="ignore"):
            up = (_forward(op, ahead) - y) / wide
            down = (y - _forward(op, behind)) / wide
            keep &= np.isfinite(up) & np.isfinite(down)
            keep &= np.abs(up - down) <= 0.5 * (np.abs(up) + np.abs(down)) + ATOL
    return keep


def _sample(op: Op, n_inputs: int, points: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Up to ``points`` random points, one array per input, where the op is smooth."""
    found: list[list[np.ndarray]] = []
    count = 0
    for _ in range(_SAMPLING_ROUNDS):
        candidates = [rng.normal(0.0, 2.0, size=4 * points) for _ in range(n_inputs)]
        for x in candidates:  # a quarter on the integers: kinks and ties live there
            x[::4] = np.round(x[::4])
        keep = _smooth_points(op, candidates)
        found.append([x[keep] for x in candidates])
        count += int(keep.sum())
        if count >= points:
            break
    return [np.concatenate(column)[:points] for column in zip(*found, strict=True)]


def _with_special_values(op: Op, xs: list[np.ndarray]) -> list[np.ndarray]:
    """The points ``xs`` followed by every combination of special values inside the
    domain."""
    specials = list(np.array(list(itertools.product(SPECIAL_VALUES, repeat=len(xs)))).T)
    inside = _inside(op, specials)
    return [np.concatenate([x, s[inside]]) for x, s in zip(xs, specials, strict=True)]


def _scalar_call(function, point: list[float], what: str):
    """``function(*point)``; None where it raises what the engine answers by running the
    array functions instead (ArithmeticError, ValueError); _Broken for anything else."""
    try:
        return function(*point)
    except (ArithmeticError, ValueError):
        return None
    except Exception as exc:
        raise _Broken(f"{what} raised {exc!r}") from exc


def _scalar_mismatch(op: Op, xs: list[np.ndarray]) -> str:
    """Where ``op.scalar`` disagrees with ``op.forward`` at the given points, as a problem
    text ("" where they agree)."""
    expected = _forward(op, xs)
    for point, want in zip(np.stack(xs, axis=1).tolist(), expected.tolist(), strict=True):
        got = _scalar_call(op.scalar, point, "scalar forward")
        if got is None:
            continue
        if not isinstance(got, float):
            raise _Broken(f"scalar forward returned {type(got).__name__}, expected float")
        if not _close(got, want):
            where = ", ".join(f"{x:.17g}" for x in point)
            return f"scalar forward gives {got!r} at ({where}), forward {want!r}"
    return ""


def _scalar_backward_mismatch(op: Op, g: np.ndarray, xs: list[np.ndarray]) -> str:
    """Where ``op.scalar_backward`` disagrees with ``op.backward`` at the given points and
    upstream gradients, as a problem text ("" where they agree)."""
    y = _forward(op, xs)
    expected = np.stack(_backward(op, g, y, xs), axis=1).tolist()
    arguments = np.stack([g, y, *xs], axis=1).tolist()
    for point, want in zip(arguments, expected, strict=True):
        got = _scalar_call(op.scalar_backward, point, "scalar backward")
        if got is None:
            continue
        if not isinstance(got, tuple | list) or len(got) != len(xs):
            raise _Broken(f"scalar backward must return {len(xs)} float(s), one per input")
        if not all(isinstance(d, float) for d in got):
            kinds = ", ".join(type(d).__name__ for d in got)
            raise _Broken(f"scalar backward returned ({kinds}), expected floats")
        if not all(_close(a, b, SCALAR_BACKWARD_ULPS) for a, b in zip(got, want, strict=True)):
            where = ", ".join(f"{x:.17g}" for x in point)
            return (
                f"scalar backward gives {tuple(got)!r} at (g, y, inputs) = ({where}), "
                f"backward {tuple(want)!r}"
            )
    return ""


def _second(op: Op, y: np.ndarray, xs: list[np.ndarray]) -> list[np.ndarray]:
    """``op.second`` as the full list of pairs i <= j (zeros for a linear op's ``()``)."""
    k = len(xs)
    pairs = k * (k + 1) // 2
    try:
        with np.errstate(all="ignore"):
            result = op.second(y, *xs)
    except Exception as exc:
        raise _Broken(f"second raised {exc!r}") from exc
    if not isinstance(result, tuple | list) or len(result) not in (0, pairs):
        raise _Broken(f"second must return {pairs} arrays (pairs i <= j) or ()")
    if not result:
        return [np.zeros(xs[0].shape) for _ in range(pairs)]
    return _arrays("second", result, xs[0].shape)


def _local_derivatives(op: Op, xs: list[np.ndarray]) -> list[np.ndarray]:
    """The backward with an upstream gradient of 1: every input's local derivative."""
    y = _forward(op, xs)
    return _backward(op, np.ones(y.shape), y, xs)


def _second_mismatch(op: Op, xs: list[np.ndarray]) -> tuple[str, int]:
    """Where ``op.second`` disagrees with central finite differences of ``op.backward``, as
    a problem text ("" where they agree), and at how many points it was checked."""
    analytic = _second(op, _forward(op, xs), xs)
    numeric: dict[tuple[int, int], np.ndarray] = {}
    smooth = np.ones(xs[0].shape, dtype=bool)
    for j, x in enumerate(xs):
        scale = np.maximum(1.0, np.abs(x))
        h, wide = STEP * scale, KINK_STEP * scale
        ahead, behind = (_local_derivatives(op, _shifted(xs, j, s * h)) for s in (1.0, -1.0))
        here = _local_derivatives(op, xs)
        far = [_local_derivatives(op, _shifted(xs, j, s * wide)) for s in (1.0, -1.0)]
        with np.errstate(all="ignore"):
            for i in range(len(xs)):
                numeric[min(i, j), max(i, j)] = (ahead[i] - behind[i]) / (2.0 * h)
                up, down = (far[0][i] - here[i]) / wide, (here[i] - far[1][i]) / wide
                smooth &= np.isfinite(up) & np.isfinite(down)
                smooth &= np.abs(up - down) <= 0.5 * (np.abs(up) + np.abs(down)) + ATOL
    pairs = [(i, j) for i in range(len(xs)) for j in range(i, len(xs))]
    for (i, j), got in zip(pairs, analytic, strict=True):
        want = numeric[i, j]
        with np.errstate(all="ignore"):
            bad = smooth & ~(np.abs(got - want) <= ATOL + RTOL * np.abs(want))
        if bad.any():
            at = int(np.argmax(bad))
            where = ", ".join(f"{x[at]:.17g}" for x in xs)
            return (
                f"second gives d2y/dx{i + 1}dx{j + 1} = {got[at]!r} at ({where}), finite "
                f"differences of backward {want[at]!r} ({int(bad.sum())} points off)",
                int(smooth.sum()),
            )
    return "", int(smooth.sum())


def _formulas_mismatch(formulas: Formulas, op: Op, xs: list[np.ndarray]) -> str:
    """Where the op's rendered array code differs from its formulas run on NumPy, as a
    problem text ("" where they agree bit for bit)."""
    y = _forward(op, xs)
    g = np.linspace(-2.0, 2.0, y.size).reshape(y.shape)
    with np.errstate(all="ignore"):
        pairs = [
            ("forward", [op.forward(*xs)], [formulas.value(ARRAY, *xs)]),
            ("backward", op.backward(g, y, *xs), formulas.grads(ARRAY, g, y, *xs)),
        ]
        if formulas.second is not None and op.second is not None:
            pairs.append(("second", op.second(y, *xs), formulas.second(ARRAY, y, *xs)))
    for what, rendered, direct in pairs:
        for got, want in zip(rendered, direct, strict=True):
            want = np.broadcast_to(want, np.shape(got))
            if not np.array_equal(got, want, equal_nan=True):
                return f"the rendered {what} differs from its formulas run on NumPy"
    return ""


def _close(a: float, b: float, ulps: int = SCALAR_ULPS) -> bool:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return abs(a - b) <= ulps * math.ulp(max(abs(a), abs(b)))


def gradcheck(op: Op, *, points: int = 200, seed: int = 0) -> GradcheckResult:
    """Compare ``op.backward`` with central finite differences at ``points`` random points,
    ``op.scalar``, if the op has one, with ``op.forward``, ``op.scalar_backward``, if
    it has one, with ``op.backward``, and ``op.second``, if it has one, with finite
    differences of ``op.backward``."""
    if points < 1:
        raise ValueError(f"points must be at least 1, got {points}")
    n_inputs = VARIADIC_INPUTS if op.arity is None else op.arity
    rng = np.random.default_rng(seed)
    try:
        xs = _sample(op, n_inputs, points, rng)
        found = len(xs[0])
        if found < points:
            problem = f"only {found} smooth points inside its domain, {points} wanted"
            return GradcheckResult(op.name, False, found, problem=problem)
        y = _forward(op, xs)
        g = rng.normal(0.0, 1.0, size=found)
        analytic = _backward(op, g, y, xs)
        errors = np.zeros((n_inputs, found))
        shares = np.zeros((n_inputs, found))
        for i, x in enumerate(xs):
            h = STEP * np.maximum(1.0, np.abs(x))
            ahead, behind = _forward(op, _shifted(xs, i, h)), _forward(op, _shifted(xs, i, -h))
            numeric = g * (ahead - behind) / (2.0 * h)
            errors[i] = np.abs(analytic[i] - numeric)
            shares[i] = errors[i] / (ATOL + RTOL * np.abs(numeric))
        checked = _with_special_values(op, xs)
        scalar_problem = "" if op.scalar is None else _scalar_mismatch(op, checked)
        if op.scalar_backward is not None:
            upstream = rng.normal(0.0, 1.0, size=len(checked[0]))
            scalar_problem += _scalar_backward_mismatch(op, upstream, checked)
        second_problem, second_points = "", 0
        if op.second is not None:
            second_problem, second_points = _second_mismatch(op, xs)
        formulas = op.formulas if isinstance(op.formulas, Formulas) else None
        formulas_problem = "" if formulas is None else _formulas_mismatch(formulas, op, checked)
    except _Broken as exc:
        return GradcheckResult(op.name, False, 0, problem=str(exc))
    shares[np.isnan(shares)] = np.inf  # a NaN gradient where the numeric one is finite
    failed = int(np.count_nonzero((shares > 1.0).any(axis=0)))
    i, worst = np.unravel_index(int(np.argmax(shares)), shares.shape)
    problems = [
        f"{failed} of {found} points outside tolerance" if failed else "",
        scalar_problem,
        second_problem,
        formulas_problem,
    ]
    return GradcheckResult(
        op.name,
        ok=not any(problems),
        points=found,
        worst_error=float(errors[i, worst]),
        worst_share=float(shares[i, worst]),
        worst_point=tuple(float(x[worst]) for x in xs),
        problem="; ".join(problem for problem in problems if problem),
        second_points=second_points,
        form="functions" if formulas is None else "formulas",
    )
