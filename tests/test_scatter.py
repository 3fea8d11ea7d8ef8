"""Scatter-add over several rows, against np.add.at and closed forms."""

import gc
import tracemalloc

import numpy as np
import pytest

from gradserve.server.engine.scatter import Scatter


def test_repeated_indices_are_summed():
    target = np.zeros((3, 2))
    Scatter(np.array([2, 0, 2, 2])).add_into(target, np.array([[1, 10], [5, 50], [2, 20], [4, 40]]))
    assert target.tolist() == [[5, 50], [0, 0], [7, 70]]


def test_distinct_indices_add_to_what_is_there():
    target = np.ones((4, 3))
    Scatter(np.array([3, 1])).add_into(target, np.full((2, 3), 2.0))
    assert target[:, 0].tolist() == [1, 3, 1, 3]


@pytest.mark.parametrize("seed", range(8))
def test_agrees_with_numpy_add_at(seed):
    rng = np.random.default_rng(seed)
    rows, size = int(rng.integers(2, 40)), int(rng.integers(1, 300))
    index = rng.integers(0, int(rng.integers(1, 2 * size)), size)
    contributions = rng.standard_normal((size, rows))
    start = rng.standard_normal((int(index.max()) + 1, rows))
    expected = start.copy()
    np.add.at(expected, index, contributions)
    ours = start.copy()
    Scatter(index).add_into(ours, contributions)
    # Sums of the same terms in another order (pairwise): equal up to rounding.
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("index", [[2, 0, 2, 2] * 50, list(range(100)), [1, 1, 2]])
def test_a_scatter_s_bytes_cover_what_it_holds(index):
    """``nbytes`` (which the plan cache counts) against what tracemalloc sees a Scatter
    keep, averaged over 100 of them: never below, at most 1 KiB above."""
    index = np.array(index)
    Scatter(index)  # NumPy's first-call allocations are not the Scatter's
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        scatters = [Scatter(index) for _ in range(100)]
        held = (tracemalloc.get_traced_memory()[0] - before) / len(scatters)
    finally:
        tracemalloc.stop()
    assert held <= scatters[0].nbytes() <= held + 1024
