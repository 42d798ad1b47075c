"""HTTP bodies as the bridge reads and writes them: JSON, scores, content encodings, errors.

Scores are float32 on the server. Written as the doubles Python widens them to, they take up
to 17 significant digits (``0.49441927671432495``), and OpenSearch ml-commons' JSON reader
(json-smart) turns any number literal longer than 18 characters into a ``BigDecimal`` that
its Cohere rerank post-processing cannot cast to ``Double``. So every score the bridge writes
is a :class:`Score`, written by :func:`dumps` in its shortest float32 form: at most 9
significant digits, always with a ``.`` (an integer literal would be read as ``Integer``),
never longer than 15 characters, and parsing back to the same float32. Every other number
(the engine's own scores, aggregations, ``_source``) is written exactly as it was read: a
:class:`Literal` keeps its text (``1.50``, ``1E+2``, ``1e400``, which as a Python float
would become ``1.5``, ``100.0`` or infinity).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

__all__ = [
    "BodyTooLarge",
    "Literal",
    "Score",
    "accepted_coding",
    "dumps",
    "error_body",
    "float32_text",
    "inflate",
    "loads",
]

_F32 = struct.Struct("<f")

# Content encodings the bridge can read (HTTP's "deflate" is zlib-wrapped; some senders
# omit the wrapper, which a second try with raw deflate reads).
_GZIP = (16 + zlib.MAX_WBITS,)
_WBITS: dict[str, tuple[int, ...]] = {
    "gzip": _GZIP,
    "x-gzip": _GZIP,
    "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS),
}


class Score(float):
    """A reranker score: a float, written by :func:`dumps` in its shortest float32 form."""

    __slots__ = ()


class Literal(float):
    """A number with a fraction or an exponent as the JSON read had it: its value as a float
    (for comparing), its ``text`` for writing back unchanged."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> Literal:
        number = super().__new__(cls, text)
        number.text = text
        return number


def float32_text(value: float) -> str:
    """The shortest decimal that reads back as the float32 nearest ``value``, as JSON.

    At most 9 significant digits, with a ``.`` in the mantissa (``1.0``, ``2.5e-05``).

    Raises:
        ValueError: ``value`` is NaN, infinite or outside float32's range.
    """
    if not math.isfinite(value):
        raise ValueError(f"a score must be finite, not {value}")
    single = _as_float32(value)
    if single is None:
        raise ValueError(f"{value} is outside float32's range")
    for digits in range(1, 10):
        text = f"{single:.{digits}g}"
        if _as_float32(float(text)) == single:
            break
    mantissa, e, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + e + exponent


def _as_float32(value: float) -> float | None:
    """The float32 nearest ``value``; None when that is beyond float32's largest."""
    try:
        single: float = _F32.unpack(_F32.pack(value))[0]
    except OverflowError:
        return None
    return single


def dumps(value: Any, pretty: bool = False) -> bytes:
    """``value`` as compact ASCII JSON, :class:`Score` values in their float32 form;
    ``pretty``: indented as the engines indent for ``?pretty``.

    ASCII escapes keep any string writable, lone surrogates included (an engine may return
    them in ``_source``). Raises ValueError on a non-finite float (not valid JSON).
    """
    parts: list[str] = []
    _write(value, parts.append, "\n" if pretty else None)
    return "".join(parts).encode("ascii")


def _write(value: Any, out: Callable[[str], None], line: str | None = None) -> None:
    """Write ``value``; ``line`` starts each line of its members (None: all on one line)."""
    if isinstance(value, str):
        out(encode_basestring_ascii(value))
    elif value is None:
        out("null")
    elif value is True:
        out("true")
    elif value is False:
        out("false")
    elif isinstance(value, Score):
        out(float32_text(value))
    elif isinstance(value, Literal):
        out(value.text)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not valid JSON")
        out(float.__repr__(value))
    elif isinstance(value, int):
        out(int.__repr__(value))
    elif isinstance(value, Mapping):
        inner = None if line is None or not value else line + "  "
        out("{")
        for i, (key, item) in enumerate(value.items()):
            out(("," if i else "") + (inner or ""))
            out(encode_basestring_ascii(str(key)))
            out(":" if inner is None else " : ")
            _write(item, out, inner)
        out("}" if inner is None else f"{line}}}")
    elif isinstance(value, list | tuple):
        inner = None if line is None or not value else line + "  "
        out("[")
        for i, item in enumerate(value):
            out(("," if i else "") + (inner or ""))
            _write(item, out, inner)
        out("]" if inner is None else f"{line}]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")


def loads(data: bytes | str) -> Any:
    """Parse strict JSON; raise ValueError for invalid text or UTF-8, ``NaN``/``Infinity``
    (Python would accept them, no engine writes them) or nesting too deep to read."""
    try:
        return json.loads(data, parse_float=Literal, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"the body is not UTF-8: {err.reason}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class BodyTooLarge(ValueError):
    """A compressed body inflates past the size limit."""


def inflate(raw: bytes, encoding: str, limit: int) -> bytes | None:
    """``raw`` decoded from its ``Content-Encoding``; None when it cannot be read here.

    None means an encoding the bridge does not know or a body that is not validly encoded:
    the caller forwards it as it came, and the engine answers as it would without the bridge.

    Raises:
        BodyTooLarge: the decoded body would exceed ``limit`` bytes (a compression bomb).
    """
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return raw
    for wbits in _WBITS.get(name, ()):
        try:
            return _inflate(raw, wbits, limit)
        except zlib.error:
            continue
    return None


def _inflate(raw: bytes, wbits: int, limit: int) -> bytes:
    out = bytearray()
    rest = raw
    while rest:  # gzip allows several members one after another
        decoder = zlib.decompressobj(wbits)
        out += decoder.decompress(rest, limit + 1 - len(out))
        if len(out) > limit or decoder.unconsumed_tail:
            raise BodyTooLarge(f"the decoded body exceeds {limit} bytes")
        if not decoder.eof:
            raise zlib.error("truncated body")
        rest = decoder.unused_data
    return bytes(out)


def accepted_coding(accept_encoding: str) -> str | None:
    """``"gzip"`` or ``"deflate"`` (in that preference) when an ``Accept-Encoding`` header
    allows it with a weight above 0, else None (send the body as it is)."""
    weights: dict[str, float] = {}
    for item in accept_encoding.lower().split(","):
        name, *params = (part.strip() for part in item.split(";"))
        q = next((p.removeprefix("q=") for p in params if p.startswith("q=")), "1")
        try:
            weights[name] = float(q)
        except ValueError:
            weights[name] = 0.0
    return next((c for c in ("gzip", "deflate") if weights.get(c, weights.get("*", 0)) > 0), None)


def error_body(status: int, kind: str, reason: str) -> dict[str, Any]:
    """An error in OpenSearch's and Elasticsearch's own shape, so clients raise as usual."""
    cause = {"type": kind, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}
