"""The ``gradserve-structure`` header: which plan a call needs, for routing by consistent hash.

A server caches a compiled plan under its graph's structure digest (the ``plan_digest`` of
its replies); behind Envoy with consistent hashing on this header (``deploy/envoy.yaml``),
every call for one structure reaches the replica that compiled it. The SDK computes the
digest with the server's own function (``gradserve.v1.structure.structure_digest``, in the
protos package both install), so its header is the hex ``plan_digest`` that a client sending
by digest would also use.

``Call.request`` is a ``StructuredRequest``: the request bytes, which also know their
structure's header value; ``channel.serialized_calls`` sends the header.
"""

HEADER = "gradserve-structure"


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
