"""The piece of protobuf's wire format that gradserve writes by hand: varints.

The server writes its result messages (``gradserve.server.packed``) and the SDK its requests
(``gradserve.client.wire``) straight from NumPy columns, because the protobuf API takes each
entry of a repeated field as a Python object. Both need the varints of field keys and
lengths; neither depends on the other, so the encoder lives here, with the protocol.
"""

VARINT, LENGTH_DELIMITED = 0, 2  # wire types


def varint(value: int) -> bytes:
    """One base-128 varint: low 7 bits first, the high bit set on all but the last byte."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
