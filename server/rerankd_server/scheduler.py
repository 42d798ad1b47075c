"""The batching scheduler: callers' pairs -> the fair queue -> model batches -> scores.

Two plain loops joined by a queue holding at most the prepared next batch (the shape of
text-embeddings-inference, whose backend also runs on a thread of its own). The batcher, on the
event loop, takes the next batch from the fair queue (order, window, deadlines, admission and
batch choice are policy: ``batching.FairQueue`` and ``batching.Admission``) and collates it on
the preparation thread while the model computes the current one (for an idle model, the model
thread collates it in the same hop as its forward pass). The model loop, on the model thread,
runs each batch (forward, activation: every torch computation stays there; then the check that
the scores are one per pair and finite) and hands it back to the event loop, where ``_finish``
gives out the scores: a batch crosses threads once each way (back through the hand-back thread
when the model has its next batch already). Each loop fails exactly the callers of the batch it
holds when anything in it raises, and goes on. A caller that leaves marks its job dead: its
pairs are skipped before they are collated and again before the model runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from rerankd_server.batching import Admission, FairQueue, IntArray, SchedulerConfig
from rerankd_server.errors import DeadlineExpired, ModelFailure, NotReady
from rerankd_server.jobs import Batch, Job, Outcome, SchedulerStats, checked_lengths, fail_all
from rerankd_server.scoring.base import FloatArray, Scorer, Truncation
from rerankd_server.workers import Worker, model_executor

log = logging.getLogger(__name__)

_NO_TIMEOUT = contextlib.nullcontext()  # a call without a deadline needs no timer
#: A batch that ran: as run (without callers who left), its start (``time.monotonic``), raw and
#: activated scores, whether all are finite, forward seconds; None when every caller had left.
_Ran = tuple[Batch, float, FloatArray, FloatArray, bool, float] | None


class BatchScheduler:
    """``async with BatchScheduler(scorer, config) as scheduler: await scheduler.submit(...)``."""

    def __init__(self, scorer: Scorer, config: SchedulerConfig, model_thread: Worker | None = None):
        """``model_thread``: the thread that loaded and warmed up the model (``model_executor``),
        so every torch computation of the model runs on one thread; owned from here on."""
        self._scorer = scorer
        self._config = config
        self.stats = SchedulerStats()
        self._queue: FairQueue[Job] = FairQueue(config)
        self._admission = Admission(self._queue, self.stats)
        self._seq = itertools.count()
        self._jobs: set[Job] = set()  # admitted and unanswered
        self._in_model = 0  # batches handed to the model loop and not finished: at most two
        self._prepared: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()  # None: stop
        self._changed = asyncio.Event()  # new work, or the model finished a batch
        self._tasks: list[asyncio.Task[None]] = []
        # The loop it runs on, kept by ``start``: asyncio.get_running_loop() makes a system
        # call each time (getpid, to notice a fork), and the request path needs it four times.
        self._loop: asyncio.AbstractEventLoop
        self._closing = False
        self._tokenizer = Worker(config.tokenizer_threads, "rerankd-tokenize")
        self._prepare = Worker(1, "rerankd-prepare")
        self._handback = Worker(1, "rerankd-handback")
        self._model = model_thread or model_executor()

    async def __aenter__(self) -> BatchScheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def queue_pairs(self) -> int:  # admitted and not yet answered, as are the two below
        return self._admission.pairs

    @property
    def queue_tokens(self) -> int:
        return self._admission.tokens

    @property
    def queued_requests(self) -> int:  # tokenized ones
        return len(self._jobs)

    async def start(self) -> None:
        """Start the batcher on the running loop and the model loop on the model thread."""
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._batcher(), name="rerankd-batcher")]
        self._model.submit(self._model_loop, self._loop)

    async def aclose(self) -> None:
        """Stop; calls still waiting fail with NotReady. Waits for the threads to finish."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._prepared.put(None)
        for job in list(self._jobs):
            job.fail(NotReady("server is shutting down"))
        loop = asyncio.get_running_loop()
        for worker in (self._tokenizer, self._prepare, self._model, self._handback):
            await loop.run_in_executor(None, worker.shutdown)

    async def submit(
        self,
        pairs: Sequence[tuple[str, str]],
        truncation: Truncation,
        deadline: float | None = None,
    ) -> Outcome:
        """Raw logits and activated scores of (query, text) ``pairs``, in request order.
        ``deadline``: absolute ``loop.time()`` after which the work is useless.

        Raises InvalidRequest (an over-long pair with truncation NONE, a request above a queue
        bound itself), Overloaded (a queue bound, or the work ahead outlasts the deadline or
        ``max_queue_wait``), DeadlineExpired (it passed, or the call cannot finish before it),
        NotReady (closing), ModelFailure (the scorer failed or gave a wrong or non-finite
        result)."""
        count = len(pairs)
        self._check_open()
        if not count:  # a job without pairs would never be batched, nor its caller answered
            return Outcome.empty()
        loop = self._loop
        self._admission.admit(count, deadline, loop.time())
        total = 0
        job: Job | None = None
        try:
            async with asyncio.timeout_at(deadline) if deadline is not None else _NO_TIMEOUT:
                tokens = await self._tokenize(pairs, truncation)
                limit = self._scorer.info.max_input_tokens
                lengths = checked_lengths(tokens, count, truncation, limit)
                total = self._admission.reserve(count, sum(lengths))
                self._admission.check_wait(count, deadline, loop.time(), total)
                start = self._queue.start_tag(total)
                job = Job(next(self._seq), tokens, lengths, start, deadline, loop)
                self._jobs.add(job)
                self._queue.add(job)
                self._changed.set()
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
            if job is not None:
                self._jobs.discard(job)
            self._admission.release(count, total)

    def check_room(self, count: int, deadline: float | None) -> None:
        """Raise what ``submit`` raises at once for ``count`` pairs (NotReady, InvalidRequest,
        Overloaded): chunking checks before it tokenizes documents for a call that is refused."""
        self._check_open()
        if count:
            self._admission.check(count, deadline, self._loop.time())

    def _check_open(self) -> None:
        if self._closing or not self._tasks:
            raise NotReady("server is not accepting work")

    async def _tokenize(self, pairs: Sequence[tuple[str, str]], truncation: Truncation) -> Any:
        try:
            if self._scorer.info.light_tokenize:
                return self._scorer.tokenize(pairs, truncation)
            return await self._tokenizer.run(self._scorer.tokenize, pairs, truncation)
        except Exception as exc:
            log.error("tokenizing %d pairs failed", len(pairs), exc_info=exc)
            raise ModelFailure(f"tokenization failed: {exc}") from exc

    async def _batcher(self) -> None:
        """Form the next batch, prepare it, queue it for the model; fail its callers if any
        of that raises (a policy bug fails every queued caller: any of them may be at fault)."""
        while True:
            batch: Batch | None = None
            try:
                batch = Batch.of(await self._next_groups(), self._config.limits.padded)
                if self._in_model:  # collate while the model computes
                    batch.model_input = await self._prepare.run(batch.collate, self._scorer)
                self._in_model += 1
                self._prepared.put(batch)
            except Exception as exc:
                log.exception("forming a batch failed; failing its callers")
                jobs = [job for job, _ in batch.groups] if batch else list(self._queue.jobs)
                fail_all(jobs, f"scheduler error: {exc}")

    async def _next_groups(self) -> list[tuple[Job, IntArray]]:
        """Wait until the model can take another batch and the queue has one for it."""
        while True:
            if self._in_model < 2 and self._queue.waiting:
                for job, message in self._queue.expire(self._loop.time()):
                    if message:  # else the deadline passed: the caller's submit reports it
                        self.stats.pairs_expired += job.remaining
                        job.fail(DeadlineExpired(message))
                groups = self._queue.next_batch(model_busy=self._in_model > 0)
                if groups:
                    return groups
            self._changed.clear()
            await self._changed.wait()

    def _model_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the model thread: run each prepared batch and hand it back to the event loop
        with its outcome, the scores or the exception that ended it. Waking the loop gives up
        the GIL, and taking it back waited a median 0.3-0.6 ms a batch under load: when the
        next batch is prepared, the hand-back thread wakes the loop and the model goes on."""
        while (batch := self._prepared.get()) is not None:
            outcome: _Ran | Exception
            try:
                outcome = self._compute(batch)
            except Exception as exc:
                outcome = exc
            if not self._prepared.empty():  # (a closed loop's RuntimeError stays in its Future)
                self._handback.submit(loop.call_soon_threadsafe, self._finish, batch, outcome)
                continue
            try:
                loop.call_soon_threadsafe(self._finish, batch, outcome)
            except RuntimeError:  # the event loop has closed: nobody waits any more
                return

    def _finish(self, batch: Batch, outcome: _Ran | Exception) -> None:
        """On the event loop: give a finished batch's scores to its callers, or fail them all
        (this is the one place the model's results enter the loop: nothing may escape it)."""
        self._in_model -= 1
        if self._queue.waiting:  # the model has room for a batch, and an idle one takes any
            self._changed.set()
        try:
            if isinstance(outcome, Exception):
                raise outcome
            if outcome is not None:
                ran, started, raw, scores, finite, seconds = outcome
                now = self._loop.time()
                # Onto the loop's clock: asyncio's own reads time.monotonic, others (uvloop) not.
                started += now - time.monotonic()
                ran.deliver(raw, scores, finite, started, now, self.stats)
                self._queue.speed.record(seconds, ran.pairs, ran.computed_tokens)
        except Exception as exc:
            log.error("model batch of %d pairs failed", batch.pairs, exc_info=exc)
            failure = exc if isinstance(exc, ModelFailure) else f"model failed: {exc}"
            fail_all([job for job, _ in batch.groups], failure)

    def _compute(self, batch: Batch) -> _Ran:
        """On the model thread: drop the pairs of callers that left meanwhile, collate if not
        done yet, forward (timed here: the loop's delay in noticing the end would inflate the
        speed estimate), activate, check the scores."""
        alive = batch.alive(self._config.limits.padded)
        if alive is None:
            return None
        started = time.monotonic()  # the loop's own clock may not be read from this thread
        model_input = alive.model_input
        if model_input is None:
            model_input = alive.collate(self._scorer)
        began = time.perf_counter()
        raw = np.asarray(self._scorer.forward(model_input), dtype=np.float32)
        seconds = time.perf_counter() - began
        scores = np.asarray(self._scorer.activate(raw), dtype=np.float32)
        return alive, started, raw, scores, alive.check(raw, scores), seconds
