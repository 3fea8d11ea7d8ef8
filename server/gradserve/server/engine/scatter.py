"""Scatter-add of many rows at once: ``target[index] += contributions``, repeats summed.

``np.add.at`` is the general tool, but on 2-D arrays (a batch of rows) it adds element by
element without buffering: 13-25 ms for a 1,089-node group of 1,000 rows, against about
2 ms here. Fancy-index ``+=`` is buffered but keeps only the last of repeated indices, so
repeated indices are first summed with one sort (computed once per group and kept with
the cached plan) and ``np.add.reduceat``.

``np.add.reduceat`` sums each run pairwise, ``np.add.at`` in sequence, so a node read
several times by one group may differ in its last bits between a batch and single rows.
"""

import numpy as np


class Scatter:
    """How to add contributions into the rows ``index`` of a target."""

    def __init__(self, index: np.ndarray) -> None:
        order = np.argsort(index, kind="stable")
        ordered = index[order]
        first = np.ones(len(index), dtype=bool)
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        self._repeats = not first.all()
        if self._repeats:
            self._order = order
            self._starts = np.flatnonzero(first)
            self._index = ordered[self._starts]
        else:
            self._index = index

    def nbytes(self) -> int:
        """The memory it holds: its index arrays and the object (about 350 bytes with its
        ``__dict__``; ``_starts`` is a view that keeps the 2-D array it was cut from)."""
        arrays = (self._order, self._starts, self._index) if self._repeats else (self._index,)
        # An index without repeats is the caller's array (or a view of it): not its data.
        owned = [a.nbytes for a in arrays if a is not self._index or self._repeats]
        return 128 * len(arrays) + sum(owned) + 384

    def add_into(self, target: np.ndarray, contributions: np.ndarray) -> None:
        """``target[index] += contributions`` with repeated indices summed."""
        if self._repeats:
            contributions = np.add.reduceat(contributions[self._order], self._starts, axis=0)
        target[self._index] += contributions
