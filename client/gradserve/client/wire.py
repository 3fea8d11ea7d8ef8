"""Protobuf's wire format written from NumPy arrays: packed numeric fields, message fields.

Filling a repeated field through the protobuf API takes each entry as a Python object: a
million-node graph's columns cost about 0.3 s that way (to lists, then into the message), and
gRPC then serialized the message again. A packed field's wire form is simple: its tag, its
length in bytes, then the values, as varints for uint32 fields and as little-endian doubles
for double fields. NumPy writes them in bulk, and a message field is the same tag and length
around a serialized message, so the SDK sends its requests as bytes it wrote. The server
writes its results the same way (``gradserve.server.service.packed``); the client does not depend on
the server; the varint encoding both use is in ``gradserve.v1.wire_format``.
"""

import numpy as np

from gradserve.v1.wire_format import delimited_header


def packed(number: int, payload: bytes) -> bytes:
    """A packed repeated field ``number`` holding ``payload``; nothing when it is empty."""
    return message(number, payload) if payload else b""


def message(number: int, payload: bytes) -> bytes:
    """A message field ``number`` holding the serialized message ``payload``."""
    return delimited_header(number, len(payload)) + payload


def doubles(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype="<f8").tobytes()
