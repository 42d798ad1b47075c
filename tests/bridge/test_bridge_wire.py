"""JSON, score literals and content encodings of the bridge's HTTP bodies (pure functions)."""

from __future__ import annotations

import gzip
import json
import re
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerankd_bridge.text import hit_text
from rerankd_bridge.wire import (
    BodyTooLarge,
    Score,
    accepted_coding,
    dumps,
    float32_text,
    inflate,
    loads,
)

# json-smart (OpenSearch ml-commons' JSON reader) reads a longer number literal as BigDecimal.
JSON_SMART_DOUBLE_LIMIT = 18


def as_float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def significant_digits(literal: str) -> int:
    mantissa = literal.lstrip("-").partition("e")[0].replace(".", "")
    return len(mantissa.lstrip("0").rstrip("0")) or 1


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_every_float32_is_written_short_and_reads_back_the_same(value: float) -> None:
    literal = float32_text(value)
    assert as_float32(float(literal)) == value
    assert len(literal) <= JSON_SMART_DOUBLE_LIMIT
    assert significant_digits(literal) <= 9
    assert re.fullmatch(r"-?\d+\.\d+(e[-+]\d+)?", literal), literal  # never an integer literal


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        (0.49441927671432495, "0.49441928"),  # a sigmoid score as the client widens it
        (0.5, "0.5"),
        (1.0, "1.0"),
        (-3.0, "-3.0"),
        (1e-05, "1.0e-05"),
        (-1234567940000000.0, "-1.234568e+15"),  # Python writes -1234568000000000.0
        (3.4028234663852886e38, "3.4028235e+38"),
    ],
)
def test_known_literals(value: float, literal: str) -> None:
    assert float32_text(value) == literal


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e39])
def test_scores_that_are_not_float32_are_refused(value: float) -> None:
    with pytest.raises(ValueError):
        float32_text(value)


def test_dumps_writes_scores_as_float32_and_everything_else_as_it_came() -> None:
    engine_score = 0.28768207245178085  # a double from the engine: kept to the last digit
    body = {
        "hits": [{"_score": Score(0.49441927671432495), "kept": engine_score, "n": 3}],
        "text": "caf\u00e9 \ud83d",  # a lone surrogate, as JSON allows and engines return
        "flags": [True, False, None],
    }
    raw = dumps(body)
    assert b'"_score":0.49441928' in raw
    assert json.loads(raw) == {**body, "hits": [{**body["hits"][0], "_score": 0.49441928}]}
    assert json.loads(raw)["hits"][0]["kept"] == engine_score
    with pytest.raises(ValueError):
        dumps({"x": float("nan")})


def test_numbers_are_written_back_exactly_as_they_were_read() -> None:
    # Python's float would write these as 1.5, 100.0, 20.0, 0.0 and fail on infinity.
    raw = b'{"a":1.50,"b":1E+2,"c":19.999999999999999999,"d":1e-400,"e":1e400,"f":-0.0,"g":[3,-7]}'
    value = loads(raw)
    assert dumps(value) == raw
    assert value["a"] == 1.5 and value["e"] == float("inf")  # compared as the floats they are
    hit = {"_source": {"n": value["b"], "m": value["g"]}}
    assert hit_text(hit, ("n", "m"), " ") == "1E+2 3 -7"  # a number field read as it was sent


def test_loads_refuses_what_is_not_strict_json() -> None:
    assert loads(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    deep = "[" * 100_000 + "]" * 100_000
    for bad in (deep, '{"a": NaN}', "[Infinity]", b"\xff\xfe{", "<html>"):
        with pytest.raises(ValueError):
            loads(bad)


BODY = json.dumps({"query": {"match_all": {}}}).encode()


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "raw"),
    [
        ("", BODY),
        ("identity", BODY),
        ("gzip", gzip.compress(BODY)),
        ("GZIP", gzip.compress(BODY[:10]) + gzip.compress(BODY[10:])),  # two gzip members
        ("deflate", zlib.compress(BODY)),
        ("deflate", raw_deflate(BODY)),  # deflate without the zlib wrapper
    ],
)
def test_inflate_reads_what_clients_send(encoding: str, raw: bytes) -> None:
    assert inflate(raw, encoding, 1 << 20) == BODY


@pytest.mark.parametrize(
    ("encoding", "raw"),
    [("br", b"\x1b\x03"), ("gzip", BODY), ("gzip", gzip.compress(BODY)[:-9])],
)
def test_inflate_leaves_what_it_cannot_read_to_the_engine(encoding: str, raw: bytes) -> None:
    assert inflate(raw, encoding, 1 << 20) is None


def test_inflate_stops_a_compression_bomb() -> None:
    bomb = gzip.compress(b" " * (8 << 20))  # 8 MiB of spaces in about 8 KB
    with pytest.raises(BodyTooLarge):
        inflate(bomb, "gzip", 1 << 20)


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        ("", None),
        ("identity", None),
        ("gzip", "gzip"),
        ("gzip, deflate", "gzip"),
        ("deflate", "deflate"),
        ("gzip;q=0, deflate;q=0.5", "deflate"),
        ("*", "gzip"),
        ("br, zstd", None),
    ],
)
def test_accepted_coding(header: str, coding: str | None) -> None:
    assert accepted_coding(header) == coding
