"""``Client.ops()``'s answer as plain Python objects rather than protobuf messages."""

from dataclasses import dataclass


@dataclass(frozen=True)
class OpInfo:
    """One op the server offers: what graphs call it, how many inputs it takes (``arity``;
    None when ``variadic``: any number, at least one), whether it has second derivatives
    (for ``hvp`` and ``hessian``), its documentation, and the plugin distribution (with its
    version and entry point) that supplied it."""

    name: str
    arity: int | None
    variadic: bool
    second_order: bool
    doc: str
    distribution: str
    version: str
    entry_point: str


def from_reply(reply) -> list[OpInfo]:
    """The ops of a ListOpsResponse, in its order (sorted by name)."""
    return [
        OpInfo(
            name=op.name,
            arity=None if op.variadic else op.arity,
            variadic=op.variadic,
            second_order=op.second_order,
            doc=op.doc,
            distribution=op.distribution,
            version=op.version,
            entry_point=op.entry_point,
        )
        for op in reply.ops
    ]
