"""The op plugin contract's own checks: what an ``Op`` refuses to be, and which input
counts it accepts (the engine's validation asks ``accepts`` for every node)."""

import dataclasses

import numpy as np
import pytest

from gradserve.ops import Op
from gradserve.ops.contract import linear_second


def _op(name: str = "f", arity: int | None = 1) -> Op:
    return Op(name, arity, forward=lambda *xs: xs[0], backward=lambda g, y, *xs: (g,) * len(xs))


@pytest.mark.parametrize("name", ["", "2x", "my-op", "a b", "f(x)"])
def test_a_name_that_is_no_identifier_is_refused(name):
    with pytest.raises(ValueError, match="op name must be a non-empty identifier"):
        _op(name)


@pytest.mark.parametrize("arity", [0, -1, -3])
def test_an_arity_below_one_is_refused(arity):
    with pytest.raises(ValueError, match=r"arity must be >= 1 or None"):
        _op(arity=arity)


@pytest.mark.parametrize("arity", [None, 1, 2, 3])
def test_an_op_accepts_its_arity_or_any_count_from_one_when_variadic(arity):
    op = _op("op_" + str(arity), arity)
    assert op.variadic is (arity is None)
    for count in range(6):
        expected = count >= 1 if arity is None else count == arity
        assert op.accepts(count) is expected, count


def test_a_linear_op_s_second_derivatives_are_none_at_all():
    assert linear_second(np.ones(3), np.ones(3), np.ones(3)) == ()


def test_an_op_is_read_only_once_made():
    """A loaded op is shared by every plan that applies it: nothing may change it in place
    (the server marks an untrusted op isolated on a copy, ``dataclasses.replace``)."""
    op = _op("f")
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.arity = 2
    isolated = dataclasses.replace(op, isolated=True)
    assert isolated.isolated and not op.isolated
