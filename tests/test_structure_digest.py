"""The structure digest (protos/gradserve/v1/structure.py), which names a compiled plan on
both sides: graphs that differ in anything but their leaf values get different digests,
including where a field's items could be cut differently (``["ab", "c"]`` and
``["a", "bc"]``, or a number moved from one id column to the next)."""

import itertools

import numpy as np

from gradserve.v1.structure import structure_digest

BASE = (["tanh", "mul"], [0, 0, 2, 1], [0, 0, 2, 1], [0, 1, 2], ["x", "w", "xw", "out"])

CHANGED = {
    "an op renamed": (["sin", "mul"], *BASE[1:]),
    "op names cut elsewhere": (["tanhm", "ul"], *BASE[1:]),
    "a label changed": (*BASE[:4], ["x", "w", "xw", "y"]),
    "labels cut elsewhere": (*BASE[:4], ["xw", "", "xw", "out"]),
    "a label added": (*BASE[:4], [*BASE[4], "more"]),
    "a node's op": (BASE[0], [0, 0, 2, 2], *BASE[2:]),
    "a node's input count": (BASE[0], BASE[1], [0, 0, 2, 2], *BASE[3:]),
    "an input id": (*BASE[:3], [0, 1, 1], BASE[4]),
    "an id moved to the next column": (BASE[0], [0, 0, 2], [1, 0, 0, 2, 1], *BASE[3:]),
    "no labels": (*BASE[:4], []),
}


def digest(fields) -> bytes:
    return structure_digest(*fields)


def test_the_same_structure_has_the_same_16_byte_digest_whatever_its_arrays_types():
    as_arrays = (
        BASE[0],
        *(np.asarray(column, dtype=np.int64) for column in BASE[1:4]),
        BASE[4],
    )
    assert len(digest(BASE)) == 16 and digest(BASE) == digest(as_arrays)


def test_every_change_of_structure_changes_the_digest():
    digests = {"base": digest(BASE)} | {name: digest(f) for name, f in CHANGED.items()}
    for (a, da), (b, db) in itertools.combinations(digests.items(), 2):
        assert da != db, f"{a} and {b} have the same digest"
