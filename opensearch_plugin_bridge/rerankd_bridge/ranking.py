"""Apply a reranking to a search response: the pure policy, with no I/O.

The bridge asks the engine once for the whole rank window (hits ``0 .. max(window,
from+size)``), reranks the window, and cuts the requested page out of one global order:

    reranked window hits (best first, ties in first-stage order)
    window hits without text, when the policy is ``"last"`` (first-stage order)
    the tail below the window (first-stage order, first-stage ``_score``)

Every page is a slice of that same order, so paging never shows a hit twice or skips one
(Elasticsearch's ``text_similarity_reranker`` is only consistent while the window covers
``from + size``; OpenSearch's rerank processor reranks each page on its own). A page that lies
wholly below the window needs no reranking at all: its hits are in first-stage positions.

The response keeps everything else the engine sent (``took``, ``_shards``, ``hits.total``,
``aggregations``, ``suggest``, ...) and gains one top-level ``"rerank"`` block saying what
happened (see :func:`rerank_block`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from rerankd_bridge.text import as_mapping, hit_text
from rerankd_bridge.wire import Score

__all__ = [
    "MAX_TIMEOUT",
    "Candidate",
    "FetchPlan",
    "MissingText",
    "Page",
    "RerankOptions",
    "apply_ranking",
    "candidates",
    "first_stage",
    "plan_fetch",
    "rerank_block",
    "to_score",
]

MissingText: TypeAlias = Literal["empty", "last"]
"""What happens to a window hit with no text in any field.

``"empty"``: scored as empty text and placed by its score (OpenSearch's rerank processor
does this); ``"last"``: not sent to the reranker, placed after the reranked hits of the
window in first-stage order, keeping the engine's ``_score``.
"""

_MISSING_TEXT: tuple[MissingText, ...] = ("empty", "last")

MAX_TIMEOUT = 600.0
"""The longest reranker deadline a search may ask for, in seconds (``timeout_ms`` 600000).

A bound on the latency reranking adds; far beyond it gRPC's deadline arithmetic overflows
and every call would end at once with DEADLINE_EXCEEDED.
"""


@dataclass(frozen=True)
class RerankOptions:
    """How one search is reranked.

    Attributes:
        fields: field paths whose text is scored (see :mod:`rerankd_bridge.text`), joined.
        window: how many first-stage hits are reranked (Elasticsearch's ``rank_window_size``).
        separator: put between the values of several fields, array items and chunks.
        missing_text: policy for window hits with no text (see :data:`MissingText`).
        first_stage_score_field: name under the hit's ``fields`` where the engine's score is
            kept (as a one-element array, like every ``fields`` entry); None keeps nothing.
        min_score: drop reranked hits scoring below it; the tail below the window is then
            dropped too (it has no reranker score), as in ``text_similarity_reranker``.
        strict: raise instead of falling back to first-stage order when reranking fails.
        timeout: seconds the reranker may take; past it the search falls back (or raises).
            At most :data:`MAX_TIMEOUT`.
        model: the rerankd model name; empty for the server's default.
        raw_scores: ask for raw logits instead of activated scores.
    """

    fields: tuple[str, ...] = ("text",)
    window: int = 100
    separator: str = "\n"
    missing_text: MissingText = "empty"
    first_stage_score_field: str | None = "_first_stage_score"
    min_score: float | None = None
    strict: bool = False
    timeout: float = 2.0
    model: str = ""
    raw_scores: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.fields, str) or not self.fields or not all(self.fields):
            raise ValueError(f"fields must be a non-empty list of field paths, not {self.fields!r}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, not {self.window}")
        if self.missing_text not in _MISSING_TEXT:
            raise ValueError(
                f"missing_text must be one of {_MISSING_TEXT}, not {self.missing_text!r}"
            )
        if not 0 < self.timeout <= MAX_TIMEOUT:
            raise ValueError(
                f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds "
                f"(timeout_ms {MAX_TIMEOUT * 1000:.0f}), not {self.timeout:g}"
            )


@dataclass(frozen=True)
class Page:
    """The page the caller asked for: ``from`` and ``size`` as in the search body."""

    from_: int = 0
    size: int = 10

    def __post_init__(self) -> None:
        if self.from_ < 0 or self.size < 0:
            raise ValueError(f"from and size must be >= 0, not {self.from_} and {self.size}")

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Page:
        """The page of a search body (engine defaults: from 0, size 10). Integers, or strings
        of digits, which both engines accept too (``"size": "20"``)."""
        from_, size = body.get("from", 0), body.get("size", 10)
        return cls(_integer(from_, from_, size), _integer(size, from_, size))


def _integer(value: Any, from_: Any, size: Any) -> int:
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"from and size must be integers, not {from_!r} and {size!r}")
    return value


@dataclass(frozen=True)
class FetchPlan:
    """What to ask the engine for, and whether the answer needs reranking."""

    from_: int
    size: int
    rerank: bool


def plan_fetch(page: Page, options: RerankOptions) -> FetchPlan:
    """Hits to fetch so that ``page`` can be cut from the global reranked order.

    The window always comes whole (so every page sees the same reranking); pages reaching
    past it also fetch the tail down to ``from + size``. A page wholly below the window, or of
    size 0 (aggregations only), is fetched as asked and not reranked.
    """
    if page.size == 0:
        return FetchPlan(page.from_, 0, rerank=False)
    if options.min_score is not None:
        return FetchPlan(0, options.window, rerank=True)
    if page.from_ >= options.window:
        return FetchPlan(page.from_, page.size, rerank=False)
    return FetchPlan(0, max(options.window, page.from_ + page.size), rerank=True)


@dataclass(frozen=True)
class Candidate:
    """One window hit: its position in the fetched hits and its text (None when it has none)."""

    position: int
    text: str | None


def candidates(response: Mapping[str, Any], options: RerankOptions) -> list[Candidate]:
    """The window hits of a fetched response with the text each one is scored on."""
    hits = _hits(response)[: options.window]
    return [
        Candidate(i, hit_text(hit, options.fields, options.separator)) for i, hit in enumerate(hits)
    ]


def to_score(found: Sequence[Candidate], options: RerankOptions) -> list[Candidate]:
    """The candidates the reranker must score, under the missing-text policy."""
    if options.missing_text == "empty":
        return [Candidate(c.position, c.text or "") for c in found]
    return [c for c in found if c.text is not None]


def rerank_block(status: str, **details: Any) -> dict[str, Any]:
    """The top-level ``"rerank"`` block added to every response the bridge handled.

    ``status`` is ``"reranked"``, ``"skipped"`` (reranking was wanted but failed: first-stage
    order; ``reason`` says why) or ``"not_needed"`` (``reason`` ``"below_window"``: the page
    lies below the rank window, where first-stage positions are final; ``"size_0"``: no hits
    were asked for).
    """
    return {"status": status, **details}


def apply_ranking(
    response: Mapping[str, Any],
    page: Page,
    options: RerankOptions,
    scores: Mapping[int, float] | None,
    block: Mapping[str, Any],
) -> dict[str, Any]:
    """Return ``response`` with the hits of ``page`` in reranked order; the input is not changed.

    Args:
        response: the engine's answer to the fetch of :func:`plan_fetch` (hits from 0).
        page: the page the caller asked for.
        options: the window, policies and the first-stage score field.
        scores: reranker score by hit position; None when reranking was skipped, which gives
            the first-stage order (``min_score`` is then not applied: there is nothing to
            compare it with).
        block: the ``"rerank"`` block to attach (see :func:`rerank_block`).
    """
    hits = _hits(response)
    window, tail = hits[: options.window], hits[options.window :]
    ranked = dict(scores or {})
    scored = sorted(ranked, key=lambda pos: (-ranked[pos], pos))
    unscored = [pos for pos in range(len(window)) if pos not in ranked]
    if scores is not None and options.min_score is not None:
        floor = options.min_score
        order = [
            _rescored(window[pos], ranked[pos], options) for pos in scored if ranked[pos] >= floor
        ]
    else:
        order = [_rescored(window[pos], ranked[pos], options) for pos in scored]
        order += [_rescored(window[pos], None, options) for pos in unscored]
        order += [_rescored(hit, None, options) for hit in tail]
    hits_block = dict(as_mapping(response.get("hits")))
    hits_block["hits"] = order[page.from_ : page.from_ + page.size]
    if ranked:  # None when min_score left no hit, as the engines write it
        hits_block["max_score"] = Score(max(ranked.values())) if order else None
    return {**response, "hits": hits_block, "rerank": dict(block)}


def first_stage(
    response: Mapping[str, Any], options: RerankOptions, block: Mapping[str, Any]
) -> dict[str, Any]:
    """Return ``response`` in the engine's order, annotated as a reranked one would be.

    For pages fetched as asked (below the window, or size 0): the hits keep their positions
    and scores and gain the first-stage score field, so callers read every page alike.
    """
    hits_block = dict(as_mapping(response.get("hits")))
    if "hits" in hits_block:
        hits_block["hits"] = [_rescored(hit, None, options) for hit in _hits(response)]
    return {**response, "hits": hits_block, "rerank": dict(block)}


def _rescored(hit: Any, score: float | None, options: RerankOptions) -> Any:
    """A copy of ``hit`` with the reranker's score (None keeps the engine's) and the kept one."""
    if not isinstance(hit, Mapping):
        return hit
    new = dict(hit)
    if options.first_stage_score_field is not None:
        new["fields"] = {
            **as_mapping(hit.get("fields")),
            options.first_stage_score_field: [hit.get("_score")],
        }
    if score is not None:
        new["_score"] = Score(score)
    return new


def _hits(response: Mapping[str, Any]) -> list[Any]:
    hits = as_mapping(response.get("hits")).get("hits")
    return hits if isinstance(hits, list) else []
