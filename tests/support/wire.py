"""Protobuf wire bytes written by hand, for requests the generated classes would not make."""

from __future__ import annotations


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) holding ``payload``: its key, its length as a
    varint, then the bytes (field numbers below 16, whose key is one byte)."""
    assert field_number < 16
    size, length = len(payload), bytearray()
    while size >= 0x80:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return bytes([field_number << 3 | 2, *length]) + payload
