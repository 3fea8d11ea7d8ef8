"""The gradient checker, in process and as ``gradserve ops check``, and what it must catch."""

import math
import os
import subprocess
import textwrap

import numpy as np
import pytest
from servers import GRADSERVE

from gradserve.ops import Op
from gradserve.ops.gradcheck import SPECIAL_VALUES, gradcheck


def test_every_loaded_op_passes(registry):
    results = [gradcheck(loaded.op) for loaded in registry.values()]
    assert all(r.ok for r in results), "\n".join(str(r) for r in results if not r.ok)
    assert all(r.points == 200 and r.worst_share < 1.0 for r in results)


def _sin_backward_without_g(g, y, x):
    return (np.cos(x),)


def _pow_without_exponent_gradient(g, y, x, p):
    return g * p * np.power(x, p - 1), np.zeros_like(p)


def _raises(*args):
    raise ValueError("plugin bug")


def _raises_type_error(*args):
    raise TypeError("plugin bug")


def _sin_backward(g, y, x):
    return (g * np.cos(x),)


def _exp_backward(g, y, x):
    return (g * y,)


def _tanh_backward(g, y, x):
    return (g / np.square(np.cosh(x)),)


def _relu(x):
    return np.maximum(x, 0.0)


def _relu_backward(g, y, x):
    return (g * (x > 0),)


WRONG = {
    "forgets the upstream gradient": (
        Op("s", 1, np.sin, _sin_backward_without_g),
        "points outside tolerance",
    ),
    "wrong sign": (Op("s", 1, np.sin, lambda g, y, x: (-g * np.cos(x),)), "outside tolerance"),
    "one input's gradient missing": (
        Op("p", 2, np.power, _pow_without_exponent_gradient, domain=lambda x, p: x > 0),
        "outside tolerance",
    ),
    "NaN gradient": (Op("s", 1, np.sin, lambda g, y, x: (g * np.nan,)), "outside tolerance"),
    "backward raises": (Op("s", 1, np.sin, _raises), "backward raised ValueError"),
    "forward raises": (Op("s", 1, _raises, lambda g, y, x: (g,)), "forward raised ValueError"),
    "wrong gradient count": (
        Op("a", 2, np.add, lambda g, y, a, b: (g,)),
        "backward must return 2 gradient(s)",
    ),
    "wrong shape": (Op("s", 1, lambda x: x[:1], lambda g, y, x: (g,)), "forward returned"),
    "wrong dtype": (Op("s", 1, lambda x: x.astype(complex), lambda g, y, x: (g,)), "complex128"),
    "domain of the wrong shape": (
        Op("s", 1, np.sin, lambda g, y, x: (g * np.cos(x),), domain=lambda x: x[:1] > 0),
        "domain returned shape (1,)",
    ),
    "empty domain": (
        Op("s", 1, np.sin, lambda g, y, x: (g * np.cos(x),), domain=lambda x: x != x),
        "only 0 smooth points",
    ),
    "scalar forward of another function": (
        Op("s", 1, np.sin, _sin_backward, scalar=math.cos),
        "scalar forward gives",
    ),
    "scalar forward off by far more than an ulp": (
        Op("e", 1, np.exp, _exp_backward, scalar=lambda x: math.exp(x) * (1.0 + 1e-14)),
        "scalar forward gives",
    ),
    "scalar relu that turns NaN into 0": (
        Op("r", 1, _relu, _relu_backward, scalar=lambda x: max(0.0, x)),
        "scalar forward gives 0.0 at (nan), forward nan",
    ),
    "scalar forward rounding halves up where the array rounds them to even": (
        Op(
            "r",
            1,
            np.round,
            lambda g, y, x: (0.0 * g,),
            scalar=lambda x: float(math.floor(x + 0.5)),
        ),
        "scalar forward gives 1.0 at (0.5), forward 0.0",
    ),
    "scalar forward raises": (
        Op("s", 1, np.sin, _sin_backward, scalar=_raises_type_error),
        "scalar forward raised TypeError",
    ),
    "scalar forward returns an int": (
        Op("a", 2, np.add, lambda g, y, a, b: (g, g), scalar=lambda a, b: int(a + b)),
        "scalar forward returned int, expected float",
    ),
    "scalar backward without the upstream gradient": (
        Op("s", 1, np.sin, _sin_backward, scalar_backward=lambda g, y, x: (math.cos(x),)),
        "scalar backward gives",
    ),
    "scalar backward as 1 - tanh^2, which rounds to 0 for large x": (
        Op("t", 1, np.tanh, _tanh_backward, scalar_backward=lambda g, y, x: (g * (1 - y * y),)),
        "scalar backward gives",
    ),
    "scalar backward raises": (
        Op("s", 1, np.sin, _sin_backward, scalar_backward=_raises_type_error),
        "scalar backward raised TypeError",
    ),
    "scalar backward with one gradient for two inputs": (
        Op("a", 2, np.add, lambda g, y, a, b: (g, g), scalar_backward=lambda g, y, a, b: (g,)),
        "scalar backward must return 2 float(s)",
    ),
    "scalar backward returns an int": (
        Op("n", 1, np.negative, lambda g, y, x: (-g,), scalar_backward=lambda g, y, x: (-int(g),)),
        "scalar backward returned (int), expected floats",
    ),
}


@pytest.mark.parametrize("case", WRONG)
def test_wrong_ops_fail(case):
    op, problem = WRONG[case]
    result = gradcheck(op)
    assert not result.ok
    assert problem in result.problem
    assert str(result).startswith("FAIL")


def _relu_backward_without_g(g, y, x):
    return ((x > 0).astype(float),)


@pytest.mark.parametrize("name", ["relu", "abs", "max", "min"])
def test_kinks_and_ties_are_sampled_and_skipped(ops, name):
    # A quarter of the candidates are integers, so 0 and ties a == b come up often; the
    # central difference of relu at 0 is 0.5, which disagrees with its convention (0), so
    # relu passes only because such points are skipped.
    result = gradcheck(ops[name], points=400)
    assert result.ok, str(result)


def test_a_scalar_forward_that_raises_where_numpy_overflows_passes():
    # math.exp raises OverflowError above 709.78 where np.exp gives inf: the engine then
    # computes the node with the array forward, so that is not a mismatch.
    result = gradcheck(Op("e", 1, np.exp, _exp_backward, scalar=math.exp))
    assert result.ok, str(result)


def test_a_scalar_backward_that_raises_where_numpy_overflows_passes(ops):
    # math.cosh raises OverflowError above 710 where the array backward divides by inf: the
    # engine then evaluates the call with the array functions, so that is not a mismatch.
    assert 710.0 in SPECIAL_VALUES
    assert gradcheck(ops["tanh"]).ok


def _steep_kink(x):
    return np.where(x > 0, 20.0 * x, 2.0 * x)


def _steep_kink_backward(g, y, x):
    return (g * np.where(x > 0, 20.0, 2.0),)


def test_a_kink_between_steep_and_shallow_slopes_is_skipped():
    """At 0 the slopes are 20 and 2: the central difference there (11) matches neither
    side. Slopes that differ by more than their mean mark a kink, however steep they are."""
    result = gradcheck(Op("k", 1, _steep_kink, _steep_kink_backward), points=400)
    assert result.ok, str(result)


def test_a_narrow_domain_is_sampled_round_after_round_until_the_points_are_found():
    """log(x - 3.5) on normal(0, 2) candidates: 4% fall inside, so a round of 4 candidates
    per point wanted finds a sixth of them; the sampler draws again, 4 per point each time,
    until it has all."""
    op = Op(
        "narrow",
        1,
        lambda x: np.log(x - 3.5),
        lambda g, y, x: (g / (x - 3.5),),
        domain=lambda x: x > 3.5,
    )
    result = gradcheck(op, points=200)
    assert result.ok, str(result)
    assert result.points == 200


def test_skipping_kinks_does_not_hide_a_wrong_gradient():
    result = gradcheck(Op("r", 1, lambda x: np.maximum(x, 0.0), _relu_backward_without_g))
    assert not result.ok
    assert result.worst_point[0] > 0


@pytest.fixture
def wrong_plugin(tmp_path) -> dict[str, str]:
    """The environment of a process in which a distribution with a wrong op is installed:
    a module and its dist-info on PYTHONPATH, found through entry points like any plugin."""
    (tmp_path / "gradserve_wrong_plugin.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from gradserve.ops import Op

            wrong_sin = Op("wrong_sin", 1, np.sin, lambda g, y, x: (np.cos(x),), doc="bug")
            """
        )
    )
    info = tmp_path / "gradserve_wrong_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gradserve-wrong-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[gradserve.ops]\nwrong_sin = gradserve_wrong_plugin:wrong_sin\n"
    )
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def ops_check(*flags: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GRADSERVE, "ops", "check", *flags], capture_output=True, text=True, timeout=60, env=env
    )


def test_ops_check_passes_every_installed_op_and_catches_a_wrong_plugin(registry, wrong_plugin):
    result = ops_check(env=wrong_plugin)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = dict(line.split(maxsplit=2)[1::-1] for line in result.stdout.splitlines()[:-1])
    assert set(lines) == {*registry, "wrong_sin"}
    assert lines.pop("wrong_sin") == "FAIL"
    assert set(lines.values()) == {"ok"}
    assert "(functions)  [gradserve-wrong-plugin 0.1]" in result.stdout  # the explicit form
    assert result.stdout.count("(formulas)  [gradserve-ops-core 0.1.0]") == len(registry)
    assert result.stdout.splitlines()[-1] == f"{len(registry)} of {len(registry) + 1} ops passed"
    assert "Traceback" not in result.stderr


def test_ops_check_one_op(wrong_plugin):
    result = ops_check("--op", "tanh", env=wrong_plugin)
    assert result.returncode == 0
    assert result.stdout.startswith("ok   tanh ")
    assert len(result.stdout.splitlines()) == 2
    assert ops_check("--op", "wrong_sin", env=wrong_plugin).returncode == 1


def test_ops_check_of_an_unknown_op_is_a_clear_error():
    result = ops_check("--op", "nosuch")
    assert result.returncode == 2
    assert "no loaded op is called 'nosuch'" in result.stderr
    assert "Traceback" not in result.stderr


def test_ops_check_rejects_a_point_count_below_one():
    result = ops_check("--points", "0")
    assert result.returncode == 2
    assert "must be at least 1, got 0" in result.stderr
