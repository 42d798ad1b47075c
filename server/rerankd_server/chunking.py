"""Long documents in chunks: plan the spans, then reduce the chunk scores to one per document.

A chunk is a span of the document's own tokens that fits the model together with the query.
Spans are returned as character offsets into the document, so a chunk is plain text: scoring
(query, chunk text) is exactly what ``CrossEncoder.predict`` does for the same chunk. Only as
much of a document is tokenized as its chunks can cover (``plan_documents``).

A chunk's text, tokenized on its own, can take more tokens than its span held in the whole
document (a span starting inside a word, or a byte-level BPE reading a word without the space
before it), so each plan is checked and, where a chunk came out too long, made again with
the budget less the excess: chunks never need truncating beside a query that leaves room.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rerankd_server.scoring.pairs import CLIP_CHARS_PER_TOKEN, CLIP_MARGIN, clip

#: Character spans of each text's tokens (a scorer's ``token_spans``).
SpansOf = Callable[[Sequence[str]], list[list[tuple[int, int]]]]

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

    Consecutive chunks share ``overlap`` tokens (lowered to less than half the budget), or a
    few more: chunks hold whole words where the text has them (a word's first token is one
    with a gap before it), so that a chunk's text tokenizes as its tokens did in the document,
    and each starts with the space before its first word, which byte-level tokenizers read
    as part of it. A document that fits is one chunk: the whole text, so it scores exactly
    as unchunked.
    """
    count = len(token_spans)
    if count <= budget:
        return ChunkPlan([(0, len(text))])

    def starts_word(i: int) -> bool:
        return i == 0 or i == count or token_spans[i][0] > token_spans[i - 1][1]

    def word_start(i: int, first: int) -> int:
        """The last word start after ``first`` and at most ``i``; ``i`` itself when there is
        none (a word longer than the chunk is cut)."""
        j = i
        while j > first + 1 and not starts_word(j):
            j -= 1
        return j if starts_word(j) else i

    overlap = max(0, min(overlap, (budget - 1) // 2))
    spans: list[tuple[int, int]] = []
    first = 0
    while True:
        end = word_start(min(first + budget, count), first)  # one past the chunk's last token
        begin = token_spans[first - 1][1] if first else 0
        spans.append((begin, token_spans[end - 1][1]))
        if end == count or len(spans) == max_chunks:
            return ChunkPlan(spans)
        first = word_start(min(first + budget - overlap, end), first)


def plan_documents(
    spans_of: SpansOf,
    query: str,
    texts: Sequence[str],
    max_input_tokens: int,
    special_tokens: int,
    overlap: int,
    max_chunks: int,
) -> list[ChunkPlan]:
    """Each document's chunks beside ``query``, as ``plan_chunks`` makes them from all of its
    tokens, while tokenizing only the start of a document far longer than its chunks cover
    (a 500 KB document split into four chunks of 128 tokens was tokenized whole). At most
    ``max_chunks`` x budget tokens are read, and one more shows that the document goes on:
    with those, ``plan_chunks`` gives what it gives with all of them."""
    budget = document_budget(max_input_tokens, special_tokens, len(spans_of([query])[0]))
    spans = _leading_spans(spans_of, texts, max_chunks * budget + 1)
    plans = [
        plan_chunks(text, found, budget, overlap, max_chunks)
        for text, found in zip(texts, spans, strict=True)
    ]
    budgets = [budget] * len(texts)
    for _ in range(_REPLANS):
        excess = _excess(spans_of, texts, plans, budgets)
        if not excess:
            break
        for i, over in excess.items():
            budgets[i] = max(budgets[i] - over, 1)
            plans[i] = plan_chunks(texts[i], spans[i], budgets[i], overlap, max_chunks)
    return plans


#: Plans made again at most this often: each time a chunk comes out too long, the budget
#: shrinks by its excess (one more token or two, as a rule, so once is nearly always enough).
_REPLANS = 4


def _excess(
    spans_of: SpansOf, texts: Sequence[str], plans: list[ChunkPlan], budgets: list[int]
) -> dict[int, int]:
    """By how many tokens the longest chunk of each document exceeds its budget, tokenized on
    its own, for the documents where one does (a document in one chunk, its whole text, never
    does). This tokenizes the chunks of chunked documents a second time."""
    chunked = [i for i, plan in enumerate(plans) if len(plan.spans) > 1]
    pieces = [(i, texts[i][a:b]) for i in chunked for a, b in plans[i].spans]
    counts = spans_of([piece for _, piece in pieces]) if pieces else []
    excess: dict[int, int] = {}
    for (i, _), found in zip(pieces, counts, strict=True):
        if len(found) > budgets[i]:
            excess[i] = max(excess.get(i, 0), len(found) - budgets[i])
    return excess


def _leading_spans(
    spans_of: SpansOf, texts: Sequence[str], count: int
) -> list[list[tuple[int, int]]]:
    """The spans of each text's first ``count`` tokens (all, for a text with fewer). A text far
    longer is cut first (``pairs.clip``, keeping its start) and the cut checked as the pair
    tokenizer checks it: the ``count``-th token ends well before the cut, so the cut changed
    none of them (pre-tokenization is local to words); otherwise the whole text is tokenized."""
    cut = [clip(text, count * CLIP_CHARS_PER_TOKEN, "right") for text in texts]
    spans = spans_of(cut)
    redo = [
        i
        for i, (text, part, found) in enumerate(zip(texts, cut, spans, strict=True))
        if part is not text
        and not (len(found) >= count and found[count - 1][1] < len(part) - CLIP_MARGIN)
    ]
    if redo:
        for i, whole in zip(redo, spans_of([texts[i] for i in redo]), strict=True):
            spans[i] = whole
    return [found[:count] for found in spans]


def reduce_scores(scores: Sequence[float], how: Reduce) -> tuple[float, int]:
    """The document's score and the index of the chunk that decided it (best chunk for MEAN)."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    if how is Reduce.FIRST:
        return scores[0], 0
    if how is Reduce.MEAN:
        return sum(scores) / len(scores), best
    return scores[best], best
