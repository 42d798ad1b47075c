"""Long documents in chunks: plan the spans, then reduce the chunk scores to one per document.

A chunk is a span of the document's own tokens that fits the model together with the query.
Spans are returned as character offsets into the document, so a chunk is plain text: scoring
(query, chunk text) is exactly what ``CrossEncoder.predict`` does for the same chunk.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MAX_CHUNKS = 16
MAX_CHUNKS_LIMIT = 64


class Reduce(enum.Enum):
    """How chunk scores make a document score."""

    MAX = "max"
    MEAN = "mean"
    FIRST = "first"


@dataclass(frozen=True)
class ChunkPlan:
    """Character spans of one document's chunks, in order."""

    spans: list[tuple[int, int]]


def document_budget(max_input_tokens: int, special_tokens: int, query_tokens: int) -> int:
    """Tokens of document that fit beside the query; never below a quarter of the input,
    so a long query cannot shrink chunks to nothing (the pair is then truncated as usual)."""
    return max(max_input_tokens - special_tokens - query_tokens, max_input_tokens // 4, 1)


def plan_chunks(
    text: str,
    token_spans: Sequence[tuple[int, int]],
    budget: int,
    overlap: int,
    max_chunks: int,
) -> ChunkPlan:
    """Split a document into at most ``max_chunks`` spans of ``budget`` tokens.

    Consecutive chunks share ``overlap`` tokens (lowered to less than half the budget).
    A document that fits is one chunk: the whole text, so it scores exactly as unchunked.
    """
    if len(token_spans) <= budget:
        return ChunkPlan([(0, len(text))])
    overlap = max(0, min(overlap, (budget - 1) // 2))
    stride = budget - overlap
    spans: list[tuple[int, int]] = []
    for first in range(0, len(token_spans), stride):
        last = min(first + budget, len(token_spans)) - 1
        spans.append((token_spans[first][0], token_spans[last][1]))
        if last == len(token_spans) - 1 or len(spans) == max_chunks:
            break
    return ChunkPlan(spans)


def reduce_scores(scores: Sequence[float], how: Reduce) -> tuple[float, int]:
    """The document's score and the index of the chunk that decided it (best chunk for MEAN)."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    if how is Reduce.FIRST:
        return scores[0], 0
    if how is Reduce.MEAN:
        return sum(scores) / len(scores), best
    return scores[best], best
