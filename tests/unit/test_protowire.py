"""Entries counted on the wire are the entries the parser finds, whatever else the bytes hold."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from rerankd.v1 import rerank_pb2 as pb
from rerankd_server.protowire import entries_over
from support.wire import length_delimited

TEXT = st.text(max_size=30)
DOCUMENT = st.builds(pb.Document, id=TEXT, text=TEXT)
RERANK = st.builds(
    pb.RerankRequest,
    query=TEXT,
    documents=st.lists(DOCUMENT, max_size=12),
    top_n=st.integers(0, 2**32 - 1),
    min_score=st.floats(width=32, allow_nan=False),
    chunking=st.builds(pb.Chunking, max_chunks=st.integers(0, 300)),
)
# Unknown fields a caller may add: varints, fixed widths, bytes, groups holding a "document".
UNKNOWN = st.sampled_from(
    [
        b"\xf8\x01\x96\x01",
        b"\xfd\x01abcd",
        b"\xf9\x01abcdefgh",
        b"\xfa\x01\x02\x12\x00",
        b"\xfb\x01\x12\x00\xfc\x01",
    ]
)


def _wire(request: pb.RerankRequest, noise: list[bytes], overlong: bool) -> bytes:
    """``request`` serialized one field (one document) at a time with unknown fields between
    them, the documents' keys written as overlong varints when ``overlong``."""
    parts = []
    for field, value in request.ListFields():
        if field.name != "documents":
            parts.append(pb.RerankRequest(**{field.name: value}).SerializeToString())
    for document in request.documents:
        data = pb.RerankRequest(documents=[document]).SerializeToString()
        parts.append(b"\x92\x00" + data[1:] if overlong else data)
    for i, extra in enumerate(noise):
        parts.insert((7 * i) % (len(parts) + 1), extra)
    return b"".join(parts)


@settings(max_examples=300, deadline=None)
@given(RERANK, st.lists(UNKNOWN, max_size=4), st.booleans(), st.integers(0, 14))
def test_entries_over_agrees_with_the_parser(
    request: pb.RerankRequest, noise: list[bytes], overlong: bool, limit: int
) -> None:
    data = _wire(request, noise, overlong)
    parsed = pb.RerankRequest.FromString(data)
    assert len(parsed.documents) == len(request.documents)
    assert entries_over(data, (2,), limit) == (len(parsed.documents) > limit)
    item = pb.RerankStreamRequest(request_id="r").SerializeToString()
    half = len(request.documents) // 2  # a message field given twice: the parser merges them
    first = pb.RerankRequest(documents=request.documents[:half]).SerializeToString()
    second = pb.RerankRequest(documents=request.documents[half:]).SerializeToString()
    stream = item + length_delimited(2, first) + length_delimited(2, second)
    assert len(pb.RerankStreamRequest.FromString(stream).request.documents) == len(
        request.documents
    )
    assert entries_over(stream, (2, 2), limit) == (len(request.documents) > limit)


def test_millions_of_empty_documents_are_found_without_parsing() -> None:
    data = b"\x12\x00" * 4_000_000
    assert entries_over(data, (2,), 1000)
    assert not entries_over(b"\x0a\x01q" + b"\x12\x00" * 1000, (2,), 1000)


def test_broken_framing_is_left_to_the_parser() -> None:
    data = b"\x12\x7f" + b"\x12\x00" * 20  # the first entry runs past the end
    assert not entries_over(data, (2,), 5)
    with pytest.raises(DecodeError):
        pb.RerankRequest.FromString(data)
