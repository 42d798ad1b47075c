"""The batching scheduler: one asyncio task turns the pairs of all callers into model batches.

Pairs of every admitted request wait in a fair queue ordered by start tags in token units.
A request's pairs, sorted longest first, get tags s, s + len(pair 0), ...; its start s is
the later of the queue's virtual time (the tag of the last batch's head) and the previous
request's start plus min(its tokens, a quantum of a few batch budgets). So requests up to a
quantum run first come, first served (none finishes later than it would alone in a queue),
a large request is split across batches and requests arriving after it interleave with it
after its first quantum,
while a stream of later requests advances through virtual time as fast as the large one
and can never starve it: each pair waits behind a bounded amount of later work. The first
``lookahead_pairs`` of that order, and no further than ``lookahead_batches`` budgets of tokens
past the head, form the window from which ``batching.select_batch`` picks a batch (head always
included) under the token budget: lengths are grouped within the window, and requests still
finish nearly in order.

Three threads do the blocking work: a tokenizer pool, one preparation thread that collates
the next batch while the model runs the current one (a channel of capacity one, as in
text-embeddings-inference), and one model thread. Pairs whose caller cancelled or whose
deadline passed are dropped before they are collated and again before the model runs.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from rerankd_server.batching import BatchLimits, batch_cost, is_full, select_batch
from rerankd_server.errors import (
    DeadlineExpired,
    InvalidRequest,
    ModelFailure,
    NotReady,
    Overloaded,
    RerankdServerError,
)
from rerankd_server.scoring.base import FloatArray, Scorer, TokenizedPairs, Truncation

log = logging.getLogger(__name__)

SPEED_WINDOW = 32  # batches the model speed estimate looks back over
SPEED_EVIDENCE = 4  # batches measured before any call is dropped as hopeless


@dataclass(frozen=True)
class SchedulerConfig:
    """Batch limits plus the admission bounds."""

    limits: BatchLimits
    lookahead_pairs: int = 512
    max_queue_pairs: int = 16384
    max_queue_tokens: int = 8_000_000
    cross_request: bool = True  # False: a batch holds one request's pairs (benchmark ablation)
    fair_quantum_batches: int = 4  # a request's head start over later ones, in batch budgets
    lookahead_batches: int = 4  # how far past the head the window reaches, in batch budgets


@dataclass(frozen=True)
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
    """Raw float32 logits in request order, and the usage."""

    logits: FloatArray
    usage: Usage


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


class _Job:
    """One admitted request inside the scheduler."""

    def __init__(
        self, seq: int, tokens: TokenizedPairs, vstart: float, deadline: float | None, now: float
    ) -> None:
        self.seq = seq
        self.tokens = tokens
        self.lengths = tokens.lengths()
        self.order = sorted(range(len(self.lengths)), key=lambda i: (-self.lengths[i], i))
        self.tags = list(
            itertools.accumulate((self.lengths[i] for i in self.order), initial=vstart)
        )
        self.dispatched = bytearray(len(self.order))
        self.cursor = 0
        self.logits = np.zeros(len(self.lengths), dtype=np.float32)
        self.remaining = len(self.lengths)
        self.pending_tokens = sum(self.lengths)
        self.future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.deadline = deadline
        self.admitted_at = now
        self.first_start: float | None = None
        self.last_end = now
        self.batches = 0
        self.dead = False

    def pending(self) -> Iterator[tuple[float, int, int, _Job]]:
        """Undispatched positions in this job's order, as (tag, seq, position, job)."""
        for pos in range(self.cursor, len(self.order)):
            if not self.dispatched[pos]:
                yield self.tags[pos], self.seq, pos, self

    def mark_dispatched(self, pos: int) -> None:
        self.dispatched[pos] = 1
        self.pending_tokens -= self.lengths[self.order[pos]]
        while self.cursor < len(self.order) and self.dispatched[self.cursor]:
            self.cursor += 1

    def tokens_before(self, tag: float) -> int:
        """Pending tokens whose start tags are below ``tag`` (an estimate: pairs already taken
        out of order past the cursor are counted too)."""
        end = bisect.bisect_left(self.tags, tag, self.cursor, len(self.order))
        return round(self.tags[end] - self.tags[self.cursor])

    @property
    def exhausted(self) -> bool:
        return self.cursor >= len(self.order)

    def fail(self, error: BaseException) -> None:
        self.dead = True
        if not self.future.done():
            self.future.set_exception(error)


@dataclass
class _Batch:
    entries: list[tuple[_Job, int]]  # (job, index of the pair in its request)
    model_input: Any
    real_tokens: int
    computed_tokens: int


def model_executor() -> ThreadPoolExecutor:
    """The one thread a model runs on: load, warm-up and every batch.

    CPU PyTorch parallelises each operator with OpenMP, and OpenMP gives every thread that
    starts parallel work a team of workers of its own. Loading or warming up on another
    thread left a second team behind, and the model thread's operators then ran about 9%
    slower (measured: 141 against 154 pairs/s on the same batches, docs/benchmarks.md).
    """
    return ThreadPoolExecutor(1, thread_name_prefix="rerankd-model")


class BatchScheduler:
    """Forms cross-request batches under a token budget and runs them on one model thread.

    Use as ``async with BatchScheduler(scorer, config) as scheduler: await scheduler.submit(...)``.
    """

    def __init__(
        self,
        scorer: Scorer,
        config: SchedulerConfig,
        model_thread: ThreadPoolExecutor | None = None,
    ) -> None:
        """``model_thread``: the single-thread executor that loaded and warmed up the model,
        so every torch computation of the model runs on one thread (see ``model_executor``);
        the scheduler owns it from here on and shuts it down."""
        self._scorer = scorer
        self._config = config
        self.stats = SchedulerStats()
        self._active: list[_Job] = []
        self._seq = itertools.count()
        self._vtime = 0.0
        self._next_start = 0.0
        self._token_times: deque[float] = deque(maxlen=SPEED_WINDOW)  # s per computed token
        self._quantum = config.fair_quantum_batches * config.limits.max_batch_tokens
        self._horizon = config.lookahead_batches * config.limits.max_batch_tokens
        self._pairs_in_flight = 0
        self._tokens_in_flight = 0
        self._prepared: _Batch | None = None
        self._preparing = False
        self._model_busy = False
        self._closing = False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tokenize_pool = ThreadPoolExecutor(2, thread_name_prefix="rerankd-tokenize")
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix="rerankd-prepare")
        self._model_pool = model_thread or model_executor()

    async def __aenter__(self) -> BatchScheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def queue_pairs(self) -> int:
        """Pairs admitted and not yet finished."""
        return self._pairs_in_flight

    @property
    def queue_tokens(self) -> int:
        """Tokens admitted and not yet finished."""
        return self._tokens_in_flight

    async def start(self) -> None:
        """Start the scheduling task on the running loop."""
        self._task = asyncio.create_task(self._run(), name="rerankd-scheduler")

    async def aclose(self) -> None:
        """Stop scheduling; calls still waiting fail with NotReady. Waits for the model thread."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in self._active:
            job.fail(NotReady("server is shutting down"))
        self._active.clear()
        loop = asyncio.get_running_loop()
        for pool in (self._tokenize_pool, self._prepare_pool, self._model_pool):
            await loop.run_in_executor(None, pool.shutdown)

    async def submit(
        self,
        pairs: Sequence[tuple[str, str]],
        truncation: Truncation,
        deadline: float | None = None,
    ) -> Outcome:
        """Score ``pairs``; returns raw logits in request order.

        Args:
            pairs: (query, text) pairs.
            truncation: how over-long pairs are handled; NONE refuses them.
            deadline: absolute ``loop.time()`` after which the work is useless.
        Raises:
            InvalidRequest: over-long pair with truncation NONE, or a request larger than the
                queue bound itself.
            Overloaded: admitting the request would exceed the queue bound.
            DeadlineExpired: the deadline passed first.
            NotReady: the scheduler is closing.
            ModelFailure: the model failed or gave a non-finite score.
        """
        if self._closing or self._task is None:
            raise NotReady("server is not accepting work")
        count = len(pairs)
        if count > self._config.max_queue_pairs:
            raise InvalidRequest(
                f"{count} pairs exceed the queue bound of {self._config.max_queue_pairs}"
            )
        if self._pairs_in_flight + count > self._config.max_queue_pairs:
            self.stats.pairs_shed += count
            raise Overloaded(f"queue full ({self._pairs_in_flight} pairs waiting); retry later")
        self._pairs_in_flight += count
        total = 0
        job: _Job | None = None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                tokens = await loop.run_in_executor(
                    self._tokenize_pool, self._scorer.tokenize, pairs, truncation
                )
                total = self._admit_tokens(tokens, truncation)
                start = max(self._vtime, self._next_start)
                self._next_start = start + min(total, self._quantum)
                job = _Job(next(self._seq), tokens, start, deadline, loop.time())
                self._active.append(job)
                self._wakeup.set()
                return await job.future
        except TimeoutError:
            if job is not None:
                job.dead = True
                self.stats.pairs_expired += job.remaining
            raise DeadlineExpired("deadline exceeded before scoring finished") from None
        except asyncio.CancelledError:
            if job is not None:  # the caller left: its queued pairs are skipped from now on
                job.dead = True
                self.stats.pairs_cancelled += job.remaining
            raise
        finally:
            self._pairs_in_flight -= count
            self._tokens_in_flight -= total

    def _admit_tokens(self, tokens: TokenizedPairs, truncation: Truncation) -> int:
        """Check truncation and the token bound; reserve the tokens. Returns them."""
        if truncation is Truncation.NONE and any(tokens.truncated):
            first = tokens.truncated.index(True)
            raise InvalidRequest(
                f"input {first} is longer than the model's {self._scorer.info.max_input_tokens} "
                "tokens and truncation is TRUNCATION_NONE"
            )
        total = sum(tokens.lengths())
        if total > self._config.max_queue_tokens:
            raise InvalidRequest(
                f"{total} tokens exceed the queue bound of {self._config.max_queue_tokens}"
            )
        if self._tokens_in_flight + total > self._config.max_queue_tokens:
            self.stats.pairs_shed += len(tokens.ids)
            raise Overloaded(f"queue full ({self._tokens_in_flight} tokens waiting); retry later")
        self._tokens_in_flight += total
        return total

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                if self._prepared is not None and not self._model_busy:
                    self._start_model(self._prepared)
                    self._prepared = None
                if self._prepared is None and not self._preparing:
                    self._start_prepare()
            except Exception as exc:  # a bug here must fail the callers, never hang them
                log.exception("scheduler step failed; failing the queued requests")
                for job in self._active:
                    job.fail(ModelFailure(f"scheduler error: {exc}"))
                self._active.clear()
                self._prepared = None

    def _live_window(self) -> list[tuple[float, int, int, _Job]]:
        """The first ``lookahead_pairs`` live pairs in tag order; drops dead jobs."""
        now = asyncio.get_running_loop().time()
        live = [job for job in self._active if not job.dead and not job.exhausted]
        queued = sum(job.pending_tokens for job in live)
        rate = self._seconds_per_token()  # once per step, not per job
        for job in live:
            if job.deadline is not None:
                self._expire_if_hopeless(job, live, queued, rate, now)
        live = [job for job in live if not job.dead]
        self._active = live
        merged = heapq.merge(*(job.pending() for job in live), key=lambda item: item[:3])
        window = list(itertools.islice(merged, self._config.lookahead_pairs))
        if window:  # look ahead a bounded amount of work, so requests still finish nearly in order
            horizon = window[0][0] + self._horizon
            window = [item for item in window if item[0] < horizon]
        if not self._config.cross_request and window:
            head_job = window[0][3]
            window = [item for item in window if item[3] is head_job]
        return window

    def _seconds_per_token(self) -> float | None:
        """Model seconds per computed token at the fastest of the last ``SPEED_WINDOW``
        batches, or None before ``SPEED_EVIDENCE`` batches ran. A drop cannot be undone, so the
        estimate errs towards keeping work: a mean let one slow batch (a first call at a new
        shape, a CPU shared with tokenization) fail calls that would have finished (CI caught
        it in the SIGTERM drain test), while the fastest recent batch still follows a device
        that stays slower."""
        if len(self._token_times) < SPEED_EVIDENCE:
            return None
        return min(self._token_times)

    def _expire_if_hopeless(
        self, job: _Job, live: list[_Job], queued: int, rate: float | None, now: float
    ) -> None:
        """Drop a job whose deadline has passed, or that cannot finish in time: the work it
        waits for (its own pending tokens and the other jobs' tokens queued ahead of its last
        pair) at ``rate`` (``_seconds_per_token``; None: not known yet) ends after its deadline.
        Computing it would only waste the model on an answer nobody will read."""
        assert job.deadline is not None
        if now >= job.deadline:
            job.dead = True  # its submit() times out and reports DEADLINE_EXCEEDED
            return
        if rate is None or now + queued * rate < job.deadline:
            return  # even the whole queue fits (the common case, checked without a scan)
        last_tag = job.tags[len(job.order) - 1]
        ahead = sum(
            other.tokens_before(last_tag) for other in live if other is not job and not other.dead
        )
        needed = (job.pending_tokens + ahead) * rate
        if now + needed < job.deadline:
            return
        self.stats.pairs_expired += job.remaining
        job.fail(
            DeadlineExpired(
                f"cannot finish before the deadline: about {needed:.3f}s of model time for this "
                f"call and the work queued ahead of it, and {job.deadline - now:.3f}s to go"
            )
        )

    def _start_prepare(self) -> None:
        window = self._live_window()
        if not window:
            return
        lengths = [job.lengths[job.order[pos]] for _, _, pos, job in window]
        chosen = select_batch(lengths, self._config.limits)
        chosen_lengths = [lengths[i] for i in chosen]
        if self._model_busy and not is_full(chosen_lengths, self._config.limits):
            return  # more pairs may arrive before the model is free; decide then
        self._vtime = max(self._vtime, window[0][0])
        entries = []
        for i in chosen:
            _, _, pos, job = window[i]
            job.mark_dispatched(pos)
            entries.append((job, job.order[pos]))
        self._preparing = True
        future = asyncio.get_running_loop().run_in_executor(
            self._prepare_pool, self._collate, entries
        )
        future.add_done_callback(lambda done: self._prepared_done(entries, done))

    def _collate(self, entries: list[tuple[_Job, int]]) -> Any:
        ids = [job.tokens.ids[i] for job, i in entries]
        has_types = entries[0][0].tokens.type_ids is not None
        type_ids = [job.tokens.type_ids[i] for job, i in entries] if has_types else None  # type: ignore[index]
        return self._scorer.collate(ids, type_ids)

    def _prepared_done(self, entries: list[tuple[_Job, int]], done: asyncio.Future[Any]) -> None:
        self._preparing = False
        error = done.exception()
        if error is not None:
            self._fail_batch(entries, error)
        else:
            self._prepared = self._batch(entries, done.result())
        self._wakeup.set()

    def _batch(self, entries: list[tuple[_Job, int]], model_input: Any) -> _Batch:
        lengths = [job.lengths[i] for job, i in entries]
        cost = batch_cost(lengths, self._config.limits.padded)
        return _Batch(entries, model_input, sum(lengths), cost)

    def _start_model(self, batch: _Batch) -> None:
        alive = [(job, i) for job, i in batch.entries if not job.dead]
        if not alive:
            return
        forward: Callable[[], FloatArray]
        if len(alive) == len(batch.entries):
            model_input = batch.model_input
            forward = lambda: self._scorer.forward(model_input)  # noqa: E731
        else:  # some callers left after collation: do not compute their pairs
            batch = self._batch(alive, None)
            forward = lambda: self._scorer.forward(self._collate(alive))  # noqa: E731

        def timed() -> tuple[FloatArray, float]:
            """The logits and the model's own seconds, measured on its thread: timing on the
            loop would add the loop's delay in noticing, which a busy loop makes many times
            the forward of a small model, and the deadline estimate would drop live work."""
            began = time.perf_counter()
            logits = forward()
            return logits, time.perf_counter() - began

        loop = asyncio.get_running_loop()
        started = loop.time()
        for job in {job.seq: job for job, _ in alive}.values():
            if job.first_start is None:
                job.first_start = started
        self._model_busy = True
        future = loop.run_in_executor(self._model_pool, timed)
        future.add_done_callback(lambda done: self._model_done(batch, done))

    def _model_done(self, batch: _Batch, done: asyncio.Future[tuple[FloatArray, float]]) -> None:
        self._model_busy = False
        if self._prepared is not None and not self._closing:
            # Hand the model its next batch before scattering these results, not a loop turn
            # later: on a fast device that turn was a tenth of its time (simgpu, docs).
            prepared, self._prepared = self._prepared, None
            try:
                self._start_model(prepared)
            except Exception as exc:  # a bug must fail these callers, never hang them
                log.exception("starting a batch failed")
                self._fail_batch(prepared.entries, ModelFailure(f"scheduler error: {exc}"))
        self._wakeup.set()
        error = done.exception()
        if error is not None:
            log.error("model batch of %d pairs failed", len(batch.entries), exc_info=error)
            self._fail_batch(batch.entries, ModelFailure(f"model failed: {error}"))
            return
        logits, seconds = done.result()
        if batch.computed_tokens:
            self._token_times.append(seconds / batch.computed_tokens)
        stats = self.stats
        stats.batches += 1
        stats.pairs_scored += len(batch.entries)
        stats.real_tokens += batch.real_tokens
        stats.computed_tokens += batch.computed_tokens
        dead = sum(job.lengths[i] for job, i in batch.entries if job.dead)
        stats.cancelled_compute_tokens += dead  # callers left while their pairs were computed
        if stats.on_batch is not None:
            stats.on_batch(len(batch.entries), batch.real_tokens, batch.computed_tokens)
        now = asyncio.get_running_loop().time()
        jobs: dict[int, _Job] = {}
        for (job, i), value in zip(batch.entries, logits.tolist(), strict=True):
            jobs[job.seq] = job
            if job.dead:
                continue
            if not math.isfinite(value):
                job.fail(
                    ModelFailure(f"the model produced a non-finite score ({value}) for input {i}")
                )
                continue
            job.logits[i] = value
            job.remaining -= 1
        for job in jobs.values():
            job.batches += 1
            job.last_end = now
            if job.remaining == 0 and not job.dead and not job.future.done():
                job.future.set_result(Outcome(job.logits, _usage(job)))

    def _fail_batch(self, entries: list[tuple[_Job, int]], error: BaseException) -> None:
        failure = error if isinstance(error, RerankdServerError) else ModelFailure(str(error))
        for job, _ in entries:
            job.fail(failure)


def _usage(job: _Job) -> Usage:
    start = job.first_start if job.first_start is not None else job.last_end
    return Usage(
        input_tokens=sum(job.lengths),
        truncated_pairs=sum(job.tokens.truncated),
        queue_time_us=round((start - job.admitted_at) * 1e6),
        inference_time_us=round((job.last_end - start) * 1e6),
        batches=job.batches,
        scored_pairs=len(job.lengths),
    )
