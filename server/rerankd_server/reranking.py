"""The reranking domain: score pairs (through the cache and the scheduler), normalize, chunk
long documents, order results. No protobuf here; the servicer converts at the edge.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rerankd_server.batching import SchedulerConfig
from rerankd_server.cache import ScoreCache
from rerankd_server.chunking import Reduce, plan_documents, reduce_scores
from rerankd_server.jobs import Usage
from rerankd_server.scheduler import BatchScheduler
from rerankd_server.scoring.base import FloatArray, Scorer, Truncation


class Normalization(enum.Enum):
    """How logits become returned scores."""

    MODEL = "model"  # the model's configured activation, as CrossEncoder.predict
    RAW = "raw"
    SIGMOID = "sigmoid"


@dataclass(frozen=True)
class ChunkOptions:
    max_chunks: int
    overlap_tokens: int
    reduce: Reduce


@dataclass(frozen=True)
class ChunkChoice:
    """Which chunk decided a document's score; offsets are UTF-8 bytes into the document."""

    index: int
    count: int
    start_byte: int
    end_byte: int


@dataclass(frozen=True)
class Ranking:
    """The results, best first: each document's index in the request and its score, as plain
    lists (no object per result: the servicer builds a message from each pair), and for a
    chunked call the chunk that decided each document, by its index in the request."""

    indices: list[int]
    scores: list[float]
    chunks: list[ChunkChoice] | None = None


@dataclass(frozen=True)
class RerankOptions:
    truncation: Truncation = Truncation.DEFAULT
    normalization: Normalization = Normalization.MODEL
    chunking: ChunkOptions | None = None
    top_n: int = 0
    min_score: float | None = None


class Reranker:
    """One served model: its scorer, its scheduler and, optionally, the shared score cache."""

    def __init__(
        self,
        name: str,
        scorer: Scorer,
        scheduler: BatchScheduler,
        config: SchedulerConfig,
        cache: ScoreCache | None = None,
    ) -> None:
        self.name = name
        self.scorer = scorer
        self.scheduler = scheduler
        self.config = config
        self._cache = cache

    async def score(
        self,
        pairs: Sequence[tuple[str, str]],
        truncation: Truncation,
        normalization: Normalization,
        deadline: float | None,
    ) -> tuple[FloatArray, Usage]:
        """Normalized float32 scores of ``pairs`` in order, and what they cost."""
        raw, activated, usage = await self._logits(pairs, truncation, deadline)
        return self.normalize(raw, activated, normalization), usage

    def normalize(self, raw: FloatArray, activated: FloatArray, how: Normalization) -> FloatArray:
        """The scores asked for: the model's activation (computed on the model thread with the
        logits), the raw logits, or a sigmoid of them (numpy: no torch on the event loop)."""
        if how is Normalization.RAW:
            return raw
        if how is Normalization.SIGMOID and not self.scorer.info.activation.endswith("Sigmoid"):
            return (1.0 / (1.0 + np.exp(-raw.astype(np.float64)))).astype(np.float32)
        return activated

    async def rerank(
        self, query: str, texts: Sequence[str], options: RerankOptions, deadline: float | None
    ) -> tuple[Ranking, Usage]:
        """Documents best first (ties by index), cut to top_n, then to min_score."""
        chunks: list[ChunkChoice] | None = None
        if options.chunking is None:
            scores, usage = await self.score(
                [(query, t) for t in texts], options.truncation, options.normalization, deadline
            )
        else:
            scores, chunks, usage = await self._rerank_chunked(query, texts, options, deadline)
        # Best first, ties by index (a stable sort), in numpy.
        order = (-scores).argsort(kind="stable")[: options.top_n or None]
        if options.min_score is not None:  # compared as Python floats compare them
            order = order[scores[order].astype(np.float64) >= options.min_score]
        return Ranking(order.tolist(), scores[order].tolist(), chunks), usage

    async def _rerank_chunked(
        self, query: str, texts: Sequence[str], options: RerankOptions, deadline: float | None
    ) -> tuple[FloatArray, list[ChunkChoice], Usage]:
        """Each document's reduced chunk score, in order, with the chunk that decided it."""
        chunking = options.chunking
        assert chunking is not None  # checked by the caller
        self.scheduler.check_room(len(texts), deadline)  # each document is a chunk at least
        info = self.scorer.info
        plans = await asyncio.get_running_loop().run_in_executor(
            None,
            plan_documents,
            self.scorer.token_spans,
            query,
            texts,
            info.max_input_tokens,
            info.pair_special_tokens,
            chunking.overlap_tokens,
            chunking.max_chunks,
        )
        pairs = [
            (query, text[a:b])
            for text, plan in zip(texts, plans, strict=True)
            for a, b in plan.spans
        ]
        scores, usage = await self.score(pairs, options.truncation, options.normalization, deadline)
        reduced, choices, offset = [], [], 0
        for text, plan in zip(texts, plans, strict=True):
            chunk_scores = scores[offset : offset + len(plan.spans)].tolist()
            offset += len(plan.spans)
            score, best = reduce_scores(chunk_scores, chunking.reduce)
            start, end = plan.spans[best]
            choice = ChunkChoice(
                index=best,
                count=len(plan.spans),
                start_byte=len(text[:start].encode("utf-8")),
                end_byte=len(text[:end].encode("utf-8")),
            )
            reduced.append(score)
            choices.append(choice)
        return np.asarray(reduced, dtype=np.float32), choices, usage

    async def _logits(
        self, pairs: Sequence[tuple[str, str]], truncation: Truncation, deadline: float | None
    ) -> tuple[FloatArray, FloatArray, Usage]:
        """Raw and activated scores, from the cache where it has them, else the scheduler."""
        if self._cache is None:
            outcome = await self.scheduler.submit(pairs, truncation, deadline)
            return outcome.logits, outcome.scores, outcome.usage
        keys = [(self.name, truncation.value, q, t) for q, t in pairs]
        cached = self._cache.get_many(keys)
        missing = [i for i, value in enumerate(cached) if value is None]
        found = [(math.nan, math.nan) if v is None else v for v in cached]
        raw, activated = (
            np.asarray(column, dtype=np.float32) for column in zip(*found, strict=True)
        )
        usage = Usage(0, 0, 0, 0, 0)
        if missing:
            outcome = await self.scheduler.submit([pairs[i] for i in missing], truncation, deadline)
            raw[missing], activated[missing] = outcome.logits, outcome.scores
            values = zip(outcome.logits.tolist(), outcome.scores.tolist(), strict=True)
            self._cache.put_many([keys[i] for i in missing], list(values))
            usage = outcome.usage
        return (
            raw,
            activated,
            dataclasses.replace(
                usage, cached_pairs=len(pairs) - len(missing), scored_pairs=len(pairs)
            ),
        )
