"""Protobuf's wire format written from NumPy arrays: packed numeric fields, message fields.

Filling a repeated field through the protobuf API takes each entry as a Python object: a
million-node graph's columns cost about 0.3 s that way (to lists, then into the message), and
gRPC then serialized the message again. A packed field's wire form is simple: its tag, its
length in bytes, then the values, as varints for uint32 fields and as little-endian doubles
for double fields. NumPy writes them in bulk, and a message field is the same tag and length
around a serialized message, so the SDK sends its requests as bytes it wrote. The server
writes its results the same way (``gradserve.server.packed``); the client does not depend on
the server; the varint encoder both use is in ``gradserve.v1.wire_format``.
"""

import numpy as np

from gradserve.v1.wire_format import LENGTH_DELIMITED, varint


def varints(values: np.ndarray) -> bytes:
    """The varints of uint32 values, back to back: a row of bytes per value, column by
    column, then each row cut to its value's length."""
    values = np.asarray(values, dtype=np.uint32)
    sizes = np.ones(len(values), dtype=np.uint8)
    for shift in (7, 14, 21, 28):
        sizes += values >= (1 << shift)
    width = int(sizes.max()) if len(values) else 1
    if width == 1:
        return values.astype(np.uint8).tobytes()
    rows = np.empty((len(values), width), dtype=np.uint8)
    used = np.empty((len(values), width), dtype=bool)
    used[:, 0] = True
    for byte in range(width):
        more = sizes > byte + 1  # the continuation bit: more bytes follow
        if byte + 1 < width:
            used[:, byte + 1] = more
        rows[:, byte] = (values >> (7 * byte)) & 0x7F | more.view(np.uint8) << 7
    return rows[used].tobytes()


def packed(number: int, payload: bytes) -> bytes:
    """A packed repeated field ``number`` holding ``payload``; nothing when it is empty."""
    return message(number, payload) if payload else b""


def message(number: int, payload: bytes) -> bytes:
    """A message field ``number`` holding the serialized message ``payload``."""
    return varint(number << 3 | LENGTH_DELIMITED) + varint(len(payload)) + payload


def doubles(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype="<f8").tobytes()
