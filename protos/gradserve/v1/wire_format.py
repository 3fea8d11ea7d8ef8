"""The pieces of protobuf's wire format that gradserve writes by hand: varints and the
header of a length-delimited field.

The server writes its result messages (``gradserve.server.service.packed``) and the SDK its requests
(``gradserve.client.wire``) straight from NumPy columns, because the protobuf API takes each
entry of a repeated field as a Python object. Neither depends on the other, so what both
need lives here, with the protocol.
"""

import numpy as np

VARINT, LENGTH_DELIMITED = 0, 2  # wire types
_FEW = 64  # below this many values, Python beats a dozen NumPy calls


_ONE_BYTE = [bytes((value,)) for value in range(0x80)]  # the varints a message mostly holds


def varint(value: int) -> bytes:
    """One base-128 varint: low 7 bits first, the high bit set on all but the last byte."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]  # tags, short lengths and small ids: no bytearray to build
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimited_header(number: int, length: int) -> bytes:
    """The key and length that start a length-delimited field ``number`` of ``length``
    bytes (a packed repeated field, a string, a message)."""
    return varint(number << 3 | LENGTH_DELIMITED) + varint(length)


def packed_varints(values: np.ndarray | list[int]) -> bytes:
    """The varints of uint32 values, back to back: a packed field's payload.

    Many values: a row of bytes per value, written column by column, then each row cut to
    its value's length.
    """
    if len(values) < _FEW:
        few = values if isinstance(values, list) else np.asarray(values, dtype=np.uint32).tolist()
        if max(few, default=0) < 0x80:
            return bytes(few)  # each value is its own one-byte varint
        return b"".join(varint(value) for value in few)
    values = np.asarray(values, dtype=np.uint32)
    sizes = np.ones(len(values), dtype=np.uint8)
    for shift in (7, 14, 21, 28):
        sizes += values >= (1 << shift)
    width = int(sizes.max())
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
