"""A Train stream's answer read by ``replies``: the same ids, values and gradients as the
generated TrainResponse parses, whether read as views of its bytes or, for any other valid
encoding, parsed again whole."""

import struct

import numpy as np
import pytest

from gradserve.client import calls, replies
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1.wire_format import VARINT, delimited_header, varint

RNG = np.random.default_rng(7)


def _answer(n: int, ids=None, rows: int = 0, request_id: int = 3) -> bytes:
    ids = list(range(n)) if ids is None else ids
    count = max(rows, 1) * len(ids)
    response = pb.EvaluateResponse(
        node_ids=ids,
        values=RNG.normal(size=count).tolist(),
        grads=RNG.normal(size=count).tolist(),
        plan_digest=b"\x01" * 16,
        rows=rows,
    )
    return pb.TrainResponse(id=request_id, response=response).SerializeToString()


def _expected(raw: bytes):
    response = pb.TrainResponse.FromString(raw).response
    return (
        np.array(response.node_ids, dtype=np.int64),
        np.array(response.values, dtype=np.float64),
        np.array(response.grads, dtype=np.float64),
    )


def _read_arrays(raw: bytes):
    reply_id, status, results = replies.read(raw)
    answer = pb.TrainResponse.FromString(raw)
    assert (reply_id, status) == (answer.id, answer.status)
    assert (results.plan_digest, results.rows) == (
        answer.response.plan_digest,
        answer.response.rows,
    )
    return results


def _assert_same(got, expected) -> None:
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)  # NaN-free: exact equality


@pytest.mark.parametrize("n", [0, 1, 127, 128, 398, 20_000, 50_000])
def test_a_backward_answer_is_read_as_views_of_its_bytes(n):
    raw = _answer(n)
    results = _read_arrays(raw)
    got = results.arrays()  # None if it had to be parsed whole
    assert got is not None
    _assert_same(got, _expected(raw))
    got[1][:1] = 5.0  # the caller's to change (a copy, not a view of the answer)


def test_a_long_answer_is_parsed_whole_at_once():
    """Past a MiB, comparing the ids with their encoding would cost more than it saves."""
    raw = _answer(70_000)
    assert len(raw) > replies._TWIN_UP_TO_BYTES
    reply_id, status, response = replies.read(raw)
    assert isinstance(response, pb.EvaluateResponse)
    assert (reply_id, status) == (3, b"")
    _assert_same(calls.arrays(response), _expected(raw))


def test_other_ids_rows_and_a_failure_are_parsed_whole():
    for raw in (
        _answer(5, ids=[0, 2, 4]),  # a selection of nodes
        _answer(5, ids=[1, 0, 2, 3, 4]),  # every node, not in order
        _answer(4, rows=3),  # rows
    ):
        results = _read_arrays(raw)
        assert results.arrays() is None
        _assert_same(calls.arrays(results), _expected(raw))
    failed = pb.TrainResponse(id=9, status=b"\x08\x05").SerializeToString()
    assert replies.read(failed)[:2] == (9, b"\x08\x05")


def test_a_field_in_two_pieces_is_parsed_whole():
    """Protobuf merges a repeated field given twice; a bytes field keeps the last piece
    only, which must not pass as the answer."""
    first = pb.TrainResponse(
        id=4, response=pb.EvaluateResponse(node_ids=[0, 1], values=[1.0, 2.0], grads=[3.0, 4.0])
    )
    second = pb.TrainResponse(
        response=pb.EvaluateResponse(node_ids=[2, 3], values=[5.0, 6.0], grads=[7.0, 8.0])
    )
    raw = first.SerializeToString() + second.SerializeToString()
    results = _read_arrays(raw)
    assert results.arrays() is None
    got = calls.arrays(results)
    _assert_same(got, _expected(raw))
    assert got[1].tolist() == [1.0, 2.0, 5.0, 6.0]


def test_unpacked_doubles_are_parsed_whole():
    """A double written one field at a time (wire type 1), which parsers must accept."""
    ids = delimited_header(1, 2) + bytes([0, 1])
    values = b"".join(bytes([2 << 3 | 1]) + struct.pack("<d", x) for x in (1.5, -2.5))
    grads = delimited_header(3, 16) + struct.pack("<2d", 0.25, 4.0)
    response = ids + values + grads
    raw = varint(1 << 3 | VARINT) + varint(6) + delimited_header(2, len(response)) + response
    results = _read_arrays(raw)
    assert results.arrays() is None
    got = calls.arrays(results)
    _assert_same(got, _expected(raw))
    assert got[1].tolist() == [1.5, -2.5]
    assert got[2].tolist() == [0.25, 4.0]
