"""Count a request's repeated entries on the wire, before it is parsed.

Parsing makes an object of every entry: 8 MB of empty ``Document`` entries (two bytes each)
parse to about 224 MB, all before the servicer can see that the call holds 4 million
documents. ``entries_over`` tells from the bytes, at C speed for nearly every real request,
whether a call holds more entries than it may, so such a call is refused unparsed.
"""

from __future__ import annotations

_LENGTH_DELIMITED = 2


def entries_over(data: bytes, path: tuple[int, ...], limit: int) -> bool:
    """Whether the message in ``data`` holds more than ``limit`` entries of the length-delimited
    field reached by ``path`` (field numbers from the top, each below 16; occurrences of a
    message field on the way are counted together, as parsing merges them).

    Every entry starts with its field's key byte, or with that byte's overlong varint form, so
    when those two bytes occur at most ``limit`` times in all of ``data`` the answer is no,
    found by ``bytes.count``; only otherwise are the fields walked. Broken framing answers no:
    the parser then reports it.
    """
    key = path[-1] << 3 | _LENGTH_DELIMITED
    if data.count(key) + data.count(key | 0x80) <= limit:
        return False
    try:
        return _count(memoryview(data), path, limit) > limit
    except IndexError:  # framing that runs past the end
        return False


def _count(data: memoryview, path: tuple[int, ...], limit: int) -> int:
    """Entries at ``path`` in ``data``, counting stops once it passes ``limit``.

    Raises:
        IndexError: a field runs past the end of ``data``.
    """
    count, at, end = 0, 0, len(data)
    groups = 0  # unknown fields may be groups: what they hold is not at this level
    while at < end and count <= limit:
        key, at = _varint(data, at)
        wire = key & 7
        if wire == _LENGTH_DELIMITED:
            length, at = _varint(data, at)
            if at + length > end:
                raise IndexError("a field runs past the end")
            if key >> 3 == path[0] and not groups:
                if len(path) == 1:
                    count += 1
                else:
                    count += _count(data[at : at + length], path[1:], limit - count)
            at += length
        elif wire == 0:
            _, at = _varint(data, at)
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        elif wire in (3, 4):
            groups += 1 if wire == 3 else -1
        else:  # a wire type protobuf does not have: the parser refuses it
            return count
    return count


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    """The varint at ``at`` and the position after it."""
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
