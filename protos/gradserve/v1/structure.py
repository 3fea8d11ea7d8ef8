"""The structure digest: what client and server compute alike to name a graph's structure.

A server caches a compiled plan under this digest (the ``plan_digest`` of its replies); a
client that sends the same structure again sends only the digest, and the SDK puts it in
the ``gradserve-structure`` header for routing by consistent hash. Both sides import this
one function, so they cannot drift apart.
"""

import hashlib

import numpy as np


def structure_digest(op_names, node_ops, input_counts, input_ids, labels) -> bytes:
    """A 16-byte digest of everything in a graph except its leaf values.

    SHA-256 over the op names and labels (each length-prefixed) and the three id columns
    as uint32 (their wire type): about 11 ms for an 800k-node graph, where BLAKE2b over
    int64 took 31 ms.
    """
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
