"""Result messages encoded from NumPy arrays are byte for byte what protobuf writes."""

import numpy as np
import pytest

from gradserve.server.engine import run as engine_entry
from gradserve.server.service import packed
from gradserve.v1 import gradserve_pb2 as pb

EDGES = [0, 1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 2**32 - 1]


def arrays(n: int, rows: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 2**32, n)
    ids[: min(n, len(EDGES))] = EDGES[: min(n, len(EDGES))]
    values = rng.normal(size=(n, rows)) * 10.0 ** rng.integers(-300, 300, size=(n, rows))
    values.ravel()[:3] = [np.inf, -0.0, np.nan][: values.size]
    return ids, values, rng.normal(size=(n, rows))


@pytest.mark.parametrize(("n", "rows"), [(0, 1), (1, 1), (11, 1), (7, 3), (5000, 2)])
def test_encoding_matches_protobuf(n, rows):
    ids, values, grads = arrays(n, rows, seed=n)
    row_by_row = {"values": values.T.ravel().tolist(), "grads": grads.T.ravel().tolist()}
    digest = bytes(range(16))
    expected = pb.EvaluateResponse(
        node_ids=ids.tolist(), plan_digest=digest, rows=rows, **row_by_row
    )
    assert packed.evaluate_response(ids, values, grads, digest) == expected.SerializeToString()
    chunk = pb.GradientChunk(
        node_ids=ids.tolist(), plan_digest=digest, rows=rows, total_nodes=2**40 + 3, **row_by_row
    )
    encoded = packed.gradient_chunk(ids, values, grads, digest, total_nodes=2**40 + 3)
    assert encoded == chunk.SerializeToString()
    parsed = pb.GradientChunk.FromString(encoded)
    assert list(parsed.node_ids) == ids.tolist() and parsed.total_nodes == 2**40 + 3


@pytest.mark.parametrize("n", [0, 1, 5, 63, 64, 300])
def test_one_row_as_lists_matches_protobuf(n):
    # The small-call path's results: Python lists of ids and floats, packed with struct.
    ids, values, grads = arrays(n, 1, seed=n)
    ids, values, grads = ids.tolist(), values[:, 0].tolist(), grads[:, 0].tolist()
    digest = bytes(range(16))
    expected = pb.EvaluateResponse(
        node_ids=ids, values=values, grads=grads, plan_digest=digest, rows=1
    )
    assert packed.evaluate_response(ids, values, grads, digest) == expected.SerializeToString()
    chunk = pb.GradientChunk(
        node_ids=ids, values=values, grads=grads, plan_digest=digest, rows=1, total_nodes=n
    )
    assert packed.gradient_chunk(ids, values, grads, digest, total_nodes=n) == (
        chunk.SerializeToString()
    )


@pytest.mark.parametrize(("n", "rows"), [(0, 1), (1, 1), (7, 3), (300, 2)])
def test_tangents_encode_as_protobuf_does(n, rows):
    ids, values, grads = arrays(n, rows, seed=n + 1)
    _, value_tangents, grad_tangents = arrays(n, rows, seed=n + 2)
    fields = {
        "values": values.T.ravel().tolist(),
        "grads": grads.T.ravel().tolist(),
        "value_tangents": value_tangents.T.ravel().tolist(),
        "grad_tangents": grad_tangents.T.ravel().tolist(),
    }
    digest = bytes(range(16))
    expected = pb.EvaluateResponse(node_ids=ids.tolist(), plan_digest=digest, rows=rows, **fields)
    encoded = packed.evaluate_response(ids, values, grads, digest, value_tangents, grad_tangents)
    assert encoded == expected.SerializeToString()
    chunk = pb.GradientChunk(
        node_ids=ids.tolist(), plan_digest=digest, rows=rows, total_nodes=n, **fields
    )
    encoded = packed.gradient_chunk(
        ids, values, grads, digest, n, value_tangents=value_tangents, grad_tangents=grad_tangents
    )
    assert encoded == chunk.SerializeToString()


@pytest.mark.parametrize(("n", "rows"), [(1, 1), (200, 1), (20_000, 2)])
def test_every_node_ids_kept_with_a_plan_encode_as_protobuf_does(n, rows):
    """A reply of every node (ids 0 to n - 1) written with the ids a plan keeps encoded
    (``Engine.every_node_ids``) is byte for byte protobuf's, 3-byte varints included."""
    _, values, grads = arrays(n, rows, seed=n + 3)
    ids = np.arange(n)
    digest = bytes(range(16))
    expected = pb.EvaluateResponse(
        node_ids=ids.tolist(),
        plan_digest=digest,
        rows=rows,
        values=values.T.ravel().tolist(),
        grads=grads.T.ravel().tolist(),
    ).SerializeToString()
    kept = engine_entry.EveryNodeIds.of(n)
    assert packed.evaluate_response(ids, values, grads, digest, wire_ids=kept.wire) == expected
