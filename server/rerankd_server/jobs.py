"""What flows through the scheduler: a call's job (from its checked tokens), a model batch, and
what they report (the call's ``Outcome`` and ``Usage``, the running ``SchedulerStats`` the
metrics read)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rerankd_server.batching import IntArray, QueuedJob, cost_of
from rerankd_server.errors import InvalidRequest, ModelFailure, RerankdServerError
from rerankd_server.scoring.base import FloatArray, Scorer, TokenizedPairs, Truncation


@dataclass(frozen=True, slots=True)
class Usage:
    """What one request cost (reported back to the caller)."""

    input_tokens: int
    truncated_pairs: int
    queue_time_us: int
    inference_time_us: int
    batches: int
    cached_pairs: int = 0
    scored_pairs: int = 0


@dataclass(frozen=True)
class Outcome:
    """Raw float32 logits and the model's activation of them, in request order; the usage."""

    logits: FloatArray
    scores: FloatArray
    usage: Usage

    @classmethod
    def empty(cls) -> Outcome:
        """No scores, for no pairs."""
        none = np.zeros(0, dtype=np.float32)
        return cls(none, none, Usage(0, 0, 0, 0, 0))


@dataclass
class SchedulerStats:
    """Counters since start; the metrics layer reads them."""

    batches: int = 0
    pairs_scored: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    pairs_shed: int = 0
    pairs_cancelled: int = 0
    pairs_expired: int = 0
    cancelled_compute_tokens: int = 0
    on_batch: Callable[[int, int, int], None] | None = None  # (pairs, real, computed tokens)

    def count(self, pairs: int, real_tokens: int, computed_tokens: int) -> None:
        """Count one batch the model ran."""
        self.batches += 1
        self.pairs_scored += pairs
        self.real_tokens += real_tokens
        self.computed_tokens += computed_tokens
        if self.on_batch is not None:
            self.on_batch(pairs, real_tokens, computed_tokens)


def checked_lengths(
    tokens: TokenizedPairs, count: int, truncation: Truncation, max_input_tokens: int
) -> list[int]:
    """Each pair's length in tokens, once the tokenizer's answer for ``count`` pairs is checked:
    one input per pair (else ModelFailure), and none cut short under TRUNCATION_NONE (else
    InvalidRequest)."""
    if not len(tokens.ids) == len(tokens.truncated) == count:
        raise ModelFailure(f"the tokenizer returned {len(tokens.ids)} inputs for {count} pairs")
    if truncation is Truncation.NONE and any(tokens.truncated):
        first = tokens.truncated.index(True)
        raise InvalidRequest(
            f"input {first} is longer than the model's {max_input_tokens} tokens and "
            "truncation is TRUNCATION_NONE"
        )
    return tokens.lengths()


class Job(QueuedJob):
    """One admitted request: its tokens, the scores gathered so far, its caller's future."""

    def __init__(
        self,
        seq: int,
        tokens: TokenizedPairs,
        lengths: Sequence[int],
        start: int,
        deadline: float | None,
        loop: asyncio.AbstractEventLoop,
    ):
        super().__init__(seq, lengths, start, deadline)
        self.tokens = tokens
        self.raw = np.zeros(self.size, dtype=np.float32)
        self.scores = np.zeros(self.size, dtype=np.float32)
        self.remaining = self.size
        self.future: asyncio.Future[Outcome] = loop.create_future()
        self.admitted_at = self.last_end = loop.time()
        self.first_start: float | None = None
        self.batches = 0

    def fail(self, error: BaseException) -> None:
        self.dead = True
        if not self.future.done():
            self.future.set_exception(error)

    def deliver(
        self, idx: IntArray, raw: FloatArray, scores: FloatArray, now: float, checked: bool
    ) -> None:
        """Take one batch's scores for the pairs ``idx``; answer the caller once all came, or
        fail it for a non-finite score. ``checked``: the whole batch is known to be finite."""
        self.batches += 1
        self.last_end = max(self.last_end, now)  # batches may come back out of order
        if self.dead:
            return
        if not checked:
            finite = np.isfinite(raw) & np.isfinite(scores)
            if not finite.all():
                bad = int(np.argmin(finite))
                self.fail(
                    ModelFailure(
                        f"the model produced a non-finite score ({raw[bad]}) for input {idx[bad]}"
                    )
                )
                return
        self.raw[idx] = raw
        self.scores[idx] = scores
        self.remaining -= len(idx)
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(Outcome(self.raw, self.scores, self.usage()))

    def usage(self) -> Usage:
        """What the call cost. A loop whose clock is cached per turn (uvloop's) can put a
        batch's start a little before the call's admission: the times are kept >= 0."""
        start = self.first_start if self.first_start is not None else self.last_end
        return Usage(
            input_tokens=self.total_tokens,
            truncated_pairs=sum(self.tokens.truncated),
            queue_time_us=max(0, round((start - self.admitted_at) * 1e6)),
            inference_time_us=max(0, round((self.last_end - start) * 1e6)),
            batches=self.batches,
            scored_pairs=self.size,
        )


@dataclass
class Batch:
    groups: list[tuple[Job, IntArray]]  # each job with the indices of its pairs, in order
    pairs: int
    real_tokens: int
    computed_tokens: int
    model_input: Any = field(default=None)  # None: collated on the model thread

    @classmethod
    def of(cls, groups: list[tuple[Job, IntArray]], padded: bool) -> Batch:
        pairs = real = longest = 0
        for job, idx in groups:  # from each job's share, without a list of lengths
            tokens, top = job.cost(idx)
            pairs, real, longest = pairs + len(idx), real + tokens, max(longest, top)
        return cls(groups, pairs, real, cost_of(pairs, real, longest, padded))

    def check(self, raw: FloatArray, scores: FloatArray) -> bool:
        """Whether the model's scores for this batch are all finite; ModelFailure when they
        are not one per pair (on the model thread: the event loop only gives them out)."""
        for what, values in (("scores", raw), ("activated scores", scores)):
            if values.shape != (self.pairs,):
                raise ModelFailure(
                    f"the model returned {what} of shape {values.shape} for {self.pairs} pairs"
                )
        return bool(np.isfinite(raw).all() and np.isfinite(scores).all())

    def deliver(
        self,
        raw: FloatArray,
        scores: FloatArray,
        finite: bool,
        started: float,
        now: float,
        stats: SchedulerStats,
    ) -> None:
        """Hand each job its scores from the model (which started at ``started``; ``now`` it
        ended; ``finite`` from ``check``); a job with a non-finite one fails alone."""
        stats.count(self.pairs, self.real_tokens, self.computed_tokens)
        offset = 0
        for job, idx in self.groups:
            job.first_start = started if job.first_start is None else min(job.first_start, started)
            part = slice(offset, offset + len(idx))
            offset += len(idx)
            if job.dead:  # the caller left while its pairs were computed
                stats.cancelled_compute_tokens += job.cost(idx)[0]
            job.deliver(idx, raw[part], scores[part], now, checked=finite)

    def alive(self, padded: bool) -> Batch | None:
        """This batch without the pairs of callers that left (None when all did)."""
        groups = [(job, idx) for job, idx in self.groups if not job.dead]
        if len(groups) == len(self.groups):
            return self
        return Batch.of(groups, padded) if groups else None  # to be collated again

    def collate(self, scorer: Scorer) -> Any:
        """The model's input for these pairs, in batch order."""
        ids = [job.tokens.ids[i] for job, idx in self.groups for i in idx.tolist()]
        if self.groups[0][0].tokens.type_ids is None:
            return scorer.collate(ids, None)
        types = [job.tokens.type_ids[i] for job, idx in self.groups for i in idx.tolist()]  # type: ignore[index]
        return scorer.collate(ids, types)


def fail_all(jobs: Sequence[Job], error: RerankdServerError | str) -> None:
    """Fail every job with ``error`` (a message: ModelFailure, i.e. INTERNAL)."""
    failure = ModelFailure(error) if isinstance(error, str) else error
    for job in jobs:
        job.fail(failure)
