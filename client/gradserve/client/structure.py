"""The ``gradserve-structure`` header: which plan a call needs, for routing by consistent hash.

A server caches a compiled plan under its graph's structure digest (the ``plan_digest`` of
its replies); behind Envoy with consistent hashing on this header (``deploy/envoy.yaml``),
every call for one structure reaches the replica that compiled it. The SDK computes the
digest exactly as the server does (``gradserve.server.engine.plan_cache.structure_digest``:
SHA-256 over the op names, labels, node ops, input counts and input ids, first 16 bytes),
so its header is the hex ``plan_digest`` that a client sending by digest would also use.

``Call.request`` is a ``StructuredRequest``: the request bytes, which also know their
structure's header value; ``channel.serialized_calls`` sends the header.
"""

import hashlib

import numpy as np

HEADER = "gradserve-structure"


def structure_digest(op_names, node_ops, input_counts, input_ids, labels) -> bytes:
    h = hashlib.sha256()
    for text in (op_names, labels):
        h.update(len(text).to_bytes(8, "little"))
        for item in text:
            encoded = item.encode()
            h.update(len(encoded).to_bytes(8, "little") + encoded)
    for array in (node_ops, input_counts, input_ids):
        data = np.ascontiguousarray(array, dtype=np.uint32)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data.data)
    return h.digest()[:16]


class StructuredRequest(bytes):
    """A serialized EvaluateRequest that carries its header value in ``structure``."""

    structure: str = ""


def structured(request: bytes, digest: bytes) -> StructuredRequest:
    marked = StructuredRequest(request)
    marked.structure = digest.hex()
    return marked


def metadata(request) -> tuple[tuple[str, str], ...]:
    """The header for ``request``, or () for a request that does not know its structure."""
    structure = getattr(request, "structure", "")
    return ((HEADER, structure),) if structure else ()


def as_bytes(request) -> bytes:
    """gRPC sends only exact ``bytes``; a StructuredRequest is copied into one."""
    return request if type(request) is bytes else bytes(request)
