"""The scheduler driven by a deterministic fake scorer: budgets, order, cancellation, fairness."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerankd_server.batching import BatchLimits, SchedulerConfig, batch_cost
from rerankd_server.errors import (
    DeadlineExpired,
    InvalidRequest,
    ModelFailure,
    NotReady,
    Overloaded,
)
from rerankd_server.jobs import Batch, Job, SchedulerStats
from rerankd_server.scheduler import BatchScheduler
from rerankd_server.scoring.base import Truncation
from support.fake_scorer import FAULT_WORD, FakeScorer, expected_logit, token_id


def config(budget: int = 256, size: int = 16, padded: bool = True, **kw: int) -> SchedulerConfig:
    return SchedulerConfig(BatchLimits(budget, size, padded), **kw)


def doc(words: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(words))


async def wait_until(condition: object, timeout: float = 5.0) -> None:
    """Yield to the loop until ``condition()`` holds (the model thread runs meanwhile)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def scored_words(scorer: FakeScorer) -> set[int]:
    return {token for batch in scorer.batches for row in batch for token in row}


async def test_results_are_in_request_order_and_match_the_model() -> None:
    scorer = FakeScorer()
    pairs = [("q", doc(n)) for n in (5, 40, 1, 17, 0, 33)]
    async with BatchScheduler(scorer, config()) as scheduler:
        outcome = await scheduler.submit(pairs, Truncation.DEFAULT)
    assert outcome.logits.tolist() == [expected_logit(q, d) for q, d in pairs]
    assert outcome.usage.input_tokens == sum(len(d.split()) + 4 for _, d in pairs)
    assert outcome.usage.batches >= 1


async def test_no_pairs_get_no_scores_at_once() -> None:
    scorer = FakeScorer()
    async with BatchScheduler(scorer, config()) as scheduler:
        outcome = await asyncio.wait_for(scheduler.submit([], Truncation.DEFAULT), 1.0)
        assert outcome.logits.size == outcome.scores.size == 0
        assert (await scheduler.submit([("q", "d")], Truncation.DEFAULT)).logits.size == 1
    assert outcome.usage.batches == 0 and len(scorer.batches) == 1  # the one-pair call's


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.lists(st.integers(0, 70), min_size=1, max_size=30), min_size=1, max_size=8),
    budget=st.integers(64, 400),
    batch_size=st.integers(1, 32),
    padded=st.booleans(),
)
def test_concurrent_requests_never_exceed_the_budget(
    sizes: list[list[int]], budget: int, batch_size: int, padded: bool
) -> None:
    async def scenario() -> None:
        scorer = FakeScorer(padded=padded)
        async with BatchScheduler(scorer, config(budget, batch_size, padded)) as scheduler:
            requests = [[(f"q{r}", doc(n, f"r{r}x")) for n in req] for r, req in enumerate(sizes)]
            outcomes = await asyncio.gather(
                *(scheduler.submit(pairs, Truncation.DEFAULT) for pairs in requests)
            )
        for pairs, outcome in zip(requests, outcomes, strict=True):
            assert outcome.logits.tolist() == [expected_logit(q, d) for q, d in pairs]
        for batch in scorer.batches:
            assert len(batch) <= batch_size
            assert batch_cost([len(row) for row in batch], padded) <= budget
        assert sum(len(b) for b in scorer.batches) == sum(len(r) for r in requests)

    asyncio.run(scenario())


async def test_cancelled_requests_are_never_scored() -> None:
    scorer = FakeScorer()
    async with BatchScheduler(scorer, config(budget=64, size=4)) as scheduler:
        scorer.gate.clear()
        first = asyncio.create_task(scheduler.submit([("q", doc(10, "a"))], Truncation.DEFAULT))
        await wait_until(lambda: scorer.events)
        doomed = asyncio.create_task(
            scheduler.submit([("q", doc(12, "gone"))] * 20, Truncation.DEFAULT)
        )
        await wait_until(lambda: scheduler.queue_tokens > 20)
        doomed.cancel()
        scorer.gate.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await doomed
        after = await scheduler.submit([("q", doc(3, "b"))], Truncation.DEFAULT)
    assert token_id("gone0") not in scored_words(scorer)
    assert after.logits.size == 1
    assert scheduler.stats.pairs_cancelled == 20
    assert scheduler.queue_pairs == 0 and scheduler.queue_tokens == 0


async def test_expired_requests_are_never_scored() -> None:
    scorer = FakeScorer()
    async with BatchScheduler(scorer, config(budget=64, size=4)) as scheduler:
        scorer.gate.clear()
        first = asyncio.create_task(scheduler.submit([("q", doc(10, "a"))], Truncation.DEFAULT))
        await wait_until(lambda: scorer.events)
        # Long enough to be admitted on a slow machine (a deadline that passes while the
        # request is tokenized leaves no queued pairs to count); the gated model makes it
        # expire in the queue.
        deadline = asyncio.get_running_loop().time() + 1.0
        with pytest.raises(DeadlineExpired):
            await scheduler.submit([("q", doc(5, "late"))] * 8, Truncation.DEFAULT, deadline)
        scorer.gate.set()
        await first
        await scheduler.submit([("q", "x")], Truncation.DEFAULT)
    assert token_id("late0") not in scored_words(scorer)
    assert scheduler.stats.pairs_expired == 8


async def test_small_request_interleaves_with_a_large_one() -> None:
    scorer = FakeScorer()
    async with BatchScheduler(scorer, config(budget=160, size=8, lookahead_pairs=32)) as scheduler:
        scorer.gate.clear()
        big = asyncio.create_task(
            scheduler.submit([("q", doc(15, "big"))] * 400, Truncation.DEFAULT)
        )
        await wait_until(lambda: scorer.events)
        small = asyncio.create_task(
            scheduler.submit([("q", doc(15, "small"))] * 3, Truncation.DEFAULT)
        )
        await wait_until(lambda: scheduler.queue_tokens == 403 * 19)  # both admitted
        scorer.gate.set()
        await small
        await big
    small_word = token_id("small0")
    last = max(i for i, batch in enumerate(scorer.batches) if any(small_word in r for r in batch))
    rows_until_small_done = sum(len(b) for b in scorer.batches[: last + 1])
    # The small request waits for the batch in the model, the one prepared, and the large
    # request's head start of one quantum (4 budgets); not for its 400 pairs.
    assert rows_until_small_done <= (2 + 4) * 8 + 3


async def test_old_large_request_is_not_starved_by_a_stream_of_small_ones() -> None:
    scorer = FakeScorer()
    finished: list[str] = []

    async def submit(name: str, count: int) -> None:
        await scheduler.submit([("q", doc(15, name))] * count, Truncation.DEFAULT)
        finished.append(name)

    async with BatchScheduler(scorer, config(budget=80, size=4, lookahead_pairs=16)) as scheduler:
        big = asyncio.create_task(submit("big", 40))
        smalls: list[asyncio.Task[None]] = []
        # A flood paced by the scheduler, not by loop turns (which would outrun the queue
        # bound on a slow machine): 8 newer small requests always wait beside the large one.
        # A starving policy would finish all 2,000 before it.
        while not big.done() and len(smalls) < 2000:
            waiting = sum(not task.done() for task in smalls)
            smalls += [asyncio.create_task(submit("s", 1)) for _ in range(8 - waiting)]
            await asyncio.sleep(0)
        await asyncio.gather(big, *smalls)
    # Later work interleaves with the large request token for token, so at most about as
    # many small pairs as large ones complete before it (plus one batch of slack).
    assert finished.index("big") <= 40 + 4


async def test_next_batch_is_prepared_while_the_model_runs() -> None:
    scorer = FakeScorer()
    async with BatchScheduler(scorer, config(budget=64, size=4)) as scheduler:
        scorer.gate.clear()
        task = asyncio.create_task(scheduler.submit([("q", doc(5))] * 12, Truncation.DEFAULT))
        await wait_until(
            lambda: "forward 4" in scorer.events and scorer.events.count("collate 4") >= 2
        )
        # The second batch was collated while the first is still in the (held) model; which
        # of the two threads logged its event first is a race, so only counts are compared.
        assert not scorer.batches
        assert Counter(scorer.events) == {"collate 4": 2, "forward 4": 1}
        scorer.gate.set()
        await task


async def test_admission_is_bounded_by_pairs_and_tokens() -> None:
    scorer = FakeScorer()
    cfg = config(budget=64, size=4, max_queue_pairs=10, max_queue_tokens=120)
    async with BatchScheduler(scorer, cfg) as scheduler:
        with pytest.raises(InvalidRequest):
            await scheduler.submit([("q", "d")] * 11, Truncation.DEFAULT)
        with pytest.raises(InvalidRequest):
            await scheduler.submit([("q", doc(40))] * 5, Truncation.DEFAULT)  # 5 x 45 tokens
        scorer.gate.clear()
        held = asyncio.create_task(scheduler.submit([("q", "d")] * 8, Truncation.DEFAULT))
        await wait_until(lambda: scorer.events)
        with pytest.raises(Overloaded):
            await scheduler.submit([("q", "d")] * 3, Truncation.DEFAULT)
        with pytest.raises(Overloaded):
            await scheduler.submit([("q", doc(40))] * 2, Truncation.DEFAULT)
        scorer.gate.set()
        await held
        await scheduler.submit([("q", "d")] * 10, Truncation.DEFAULT)
    assert scheduler.stats.pairs_shed == 5


async def test_truncation_none_refuses_over_long_pairs() -> None:
    scorer = FakeScorer(max_tokens=16)
    async with BatchScheduler(scorer, config(budget=64)) as scheduler:
        pairs = [("q", doc(3)), ("q", doc(30))]
        with pytest.raises(InvalidRequest, match="input 1"):
            await scheduler.submit(pairs, Truncation.NONE)
        outcome = await scheduler.submit(pairs, Truncation.DEFAULT)
    assert outcome.usage.truncated_pairs == 1
    assert scorer.batches and all(len(row) <= 16 for b in scorer.batches for row in b)


async def test_non_finite_scores_fail_only_their_request() -> None:
    scorer = FakeScorer(poison="bad")
    async with BatchScheduler(scorer, config(budget=256, size=16)) as scheduler:
        scorer.gate.clear()
        first = asyncio.create_task(scheduler.submit([("q", "warm")], Truncation.DEFAULT))
        await wait_until(lambda: scorer.events)
        bad = asyncio.create_task(scheduler.submit([("q", "bad"), ("q", "ok")], Truncation.DEFAULT))
        good = asyncio.create_task(scheduler.submit([("q", "fine")], Truncation.DEFAULT))
        await wait_until(lambda: scheduler.queue_pairs == 4)
        scorer.gate.set()
        await first
        with pytest.raises(ModelFailure, match="non-finite"):
            await bad
        assert (await good).logits.tolist() == [expected_logit("q", "fine")]


async def test_model_exception_fails_the_batch_and_the_scheduler_goes_on() -> None:
    scorer = FakeScorer()
    async with BatchScheduler(scorer, config()) as scheduler:
        scorer.fail_next = True
        with pytest.raises(ModelFailure, match="simulated"):
            await scheduler.submit([("q", "d")], Truncation.DEFAULT)
        assert (await scheduler.submit([("q", "d")], Truncation.DEFAULT)).logits.size == 1


async def test_close_fails_waiting_requests_with_not_ready() -> None:
    scorer = FakeScorer()
    scheduler = BatchScheduler(scorer, config(budget=64, size=1))
    await scheduler.start()
    scorer.gate.clear()
    task = asyncio.create_task(scheduler.submit([("q", "d")] * 3, Truncation.DEFAULT))
    await wait_until(lambda: scorer.events)
    closing = asyncio.create_task(scheduler.aclose())
    await asyncio.sleep(0.01)
    scorer.gate.set()
    await closing
    with pytest.raises(NotReady):
        await task
    with pytest.raises(NotReady):
        await scheduler.submit([("q", "d")], Truncation.DEFAULT)


async def test_random_mixed_load_matches_sequential_results() -> None:
    rng = random.Random(7)
    requests = [
        [(f"query {r}", doc(rng.randint(0, 60), f"r{r}d{i}_")) for i in range(rng.randint(1, 25))]
        for r in range(32)
    ]
    scorer = FakeScorer()
    async with BatchScheduler(scorer, config(budget=300, size=12, lookahead_pairs=40)) as scheduler:
        together = await asyncio.gather(
            *(scheduler.submit(p, Truncation.DEFAULT) for p in requests)
        )
        alone = [await scheduler.submit(p, Truncation.DEFAULT) for p in requests]
    for a, b in zip(together, alone, strict=True):
        assert a.logits.tolist() == b.logits.tolist()


async def test_without_cross_request_batching_a_batch_holds_one_request() -> None:
    scorer = FakeScorer()
    cfg = SchedulerConfig(BatchLimits(512, 16, True), cross_request=False)
    async with BatchScheduler(scorer, cfg) as scheduler:
        scorer.gate.clear()
        first = asyncio.create_task(scheduler.submit([("q", doc(3, "a"))], Truncation.DEFAULT))
        await wait_until(lambda: scorer.events)
        tasks = [
            asyncio.create_task(scheduler.submit([("q", doc(3, f"r{r}_"))] * 3, Truncation.DEFAULT))
            for r in range(4)
        ]
        await wait_until(lambda: scheduler.queue_pairs == 13)
        scorer.gate.set()
        await asyncio.gather(first, *tasks)
    assert [len(batch) for batch in scorer.batches] == [1, 3, 3, 3, 3]
    for batch in scorer.batches[1:]:
        assert len({row[-2] for row in batch}) == 1  # one request's pairs (same last word)


async def test_requests_within_a_quantum_run_first_come_first_served() -> None:
    scorer = FakeScorer()
    async with BatchScheduler(scorer, config(budget=160, size=8)) as scheduler:
        scorer.gate.clear()
        tasks = []
        for i in range(6):  # 16 pairs of 19 tokens each: two batches, well within a quantum
            tasks.append(
                asyncio.create_task(
                    scheduler.submit([("q", doc(15, f"r{i}_"))] * 16, Truncation.DEFAULT)
                )
            )
            await wait_until(lambda: scheduler.queue_tokens == 304 * len(tasks))
        scorer.gate.set()
        await asyncio.gather(*tasks)
    # Each request is served whole before the next: none finishes late because all were
    # interleaved (request i fills batches 2i and 2i + 1, then is done).
    for i in range(6):
        word = token_id(f"r{i}_0")
        last = max(b for b, batch in enumerate(scorer.batches) if any(word in row for row in batch))
        assert last <= 2 * i + 1, (i, last)


class SlowFake(FakeScorer):
    def forward(self, batch: Any) -> Any:
        time.sleep(0.0005 * sum(len(row) for row in batch))
        return super().forward(batch)


async def test_work_that_cannot_meet_its_deadline_is_dropped_before_it_runs() -> None:
    scorer = SlowFake()
    async with BatchScheduler(scorer, config(budget=200, size=8)) as scheduler:
        await scheduler.submit([("q", doc(15, "warm"))] * 48, Truncation.DEFAULT)  # learn speed
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.5  # 400 pairs x 19 tokens need about 3.8 s of model time
        with pytest.raises(DeadlineExpired, match="cannot finish"):
            await scheduler.submit([("q", doc(15, "doomed"))] * 400, Truncation.DEFAULT, deadline)
        assert loop.time() < deadline  # refused early, not after waiting for the deadline
    assert token_id("doomed0") not in scored_words(scorer)
    assert scheduler.stats.pairs_expired == 400


async def test_work_stuck_behind_a_queue_it_cannot_outrun_is_refused_at_once() -> None:
    scorer = SlowFake()
    async with BatchScheduler(scorer, config(budget=200, size=8)) as scheduler:
        await scheduler.submit([("q", doc(15, "warm"))] * 48, Truncation.DEFAULT)  # learn speed
        ahead = [  # six calls of 32 x 19 tokens, each within a quantum: served in arrival order
            asyncio.create_task(
                scheduler.submit([("q", doc(15, f"a{i}_"))] * 32, Truncation.DEFAULT)
            )
            for i in range(6)
        ]
        await wait_until(lambda: scheduler.queued_requests >= 6)
        loop = asyncio.get_running_loop()
        # The queue ahead needs ~1.8 s: refused even if more than a second of the queue ran
        # before it was admitted (a slow machine), with a hint of when to come back.
        deadline = loop.time() + 0.6
        with pytest.raises(Overloaded, match="queued work ahead") as refused:
            await scheduler.submit([("q", doc(15, "late"))] * 16, Truncation.DEFAULT, deadline)
        assert loop.time() < deadline  # refused early, not after waiting for the deadline
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        await asyncio.gather(*ahead)  # the calls ahead are untouched
    assert token_id("late0") not in scored_words(scorer)
    assert scheduler.stats.pairs_shed == 16


async def test_work_the_queue_ahead_would_make_late_is_refused_once_its_size_is_known() -> None:
    scorer = SlowFake()
    async with BatchScheduler(scorer, config(budget=200, size=8)) as scheduler:
        await scheduler.submit([("q", doc(15, "warm"))] * 48, Truncation.DEFAULT)  # learn speed
        ahead = [  # two calls of 32 x 19 tokens: ~0.6 s of model time
            asyncio.create_task(
                scheduler.submit([("q", doc(15, f"a{i}_"))] * 32, Truncation.DEFAULT)
            )
            for i in range(2)
        ]
        await wait_until(lambda: scheduler.queued_requests >= 2)
        loop = asyncio.get_running_loop()
        # The queue ahead fits the deadline, and so does the call's own ~0.6 s, but not both:
        # refused (a retry may succeed) once tokenized, not left to time out.
        deadline = loop.time() + 0.9
        with pytest.raises(Overloaded, match="to the deadline"):
            await scheduler.submit([("q", doc(15, "late"))] * 64, Truncation.DEFAULT, deadline)
        assert loop.time() < deadline
        await asyncio.gather(*ahead)
    assert token_id("late0") not in scored_words(scorer)


async def test_max_queue_wait_refuses_calls_without_a_deadline() -> None:
    scorer = SlowFake()
    cfg = SchedulerConfig(BatchLimits(200, 8, True), max_queue_wait=0.1)
    async with BatchScheduler(scorer, cfg) as scheduler:
        await scheduler.submit([("q", doc(15, "warm"))] * 48, Truncation.DEFAULT)  # learn speed
        scorer.gate.clear()  # hold the model: the queue stays as built
        forwards = scorer.events.count("forward 8")
        # One large call, ~1.5 s of work (its own work is no wait, so it is admitted); a call
        # after it waits for the rest of its first quantum (four budgets, ~0.4 s, less the
        # batch in the model and the one prepared).
        ahead = asyncio.create_task(
            scheduler.submit([("q", doc(15, "ahead"))] * 160, Truncation.DEFAULT)
        )
        await wait_until(lambda: scorer.events.count("forward 8") > forwards)
        with pytest.raises(Overloaded, match="queued work ahead") as refused:
            await scheduler.submit([("q", doc(15, "late"))], Truncation.DEFAULT)
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        scorer.gate.set()
        await ahead
        # Once the queue drained, the same call is served.
        assert (await scheduler.submit([("q", "d")], Truncation.DEFAULT)).logits.size == 1


class SlowFirstFake(SlowFake):
    """The first batch stalls (a first call at a new shape, a CPU busy tokenizing)."""

    def forward(self, batch: Any) -> Any:
        if not self.batches:
            time.sleep(2.0)
        return super().forward(batch)


async def test_one_slow_batch_does_not_fail_calls_that_can_finish() -> None:
    scorer = SlowFirstFake()
    async with BatchScheduler(scorer, config(budget=200, size=8)) as scheduler:
        await scheduler.submit([("q", doc(15, "warm"))] * 48, Truncation.DEFAULT)  # 6 batches
        loop = asyncio.get_running_loop()
        # 160 pairs x 19 tokens need about 1.5 s at the model's steady speed (3.5 s of slack
        # for a slow machine); an average that still remembers the stall (2 s over 152 tokens)
        # would estimate about 8 s.
        deadline = loop.time() + 5.0
        pairs = [("q", doc(15, "kept"))] * 160
        outcome = await scheduler.submit(pairs, Truncation.DEFAULT, deadline)
    assert outcome.logits.tolist() == [expected_logit(q, d) for q, d in pairs]
    assert scheduler.stats.pairs_expired == 0


class FixedCostFake(FakeScorer):
    """A batch costs 20 ms whatever it holds, and a little more per token (a small model)."""

    def forward(self, batch: Any) -> Any:
        time.sleep(0.02 + 0.00001 * sum(len(row) for row in batch))
        return super().forward(batch)


async def test_small_batches_do_not_make_a_large_request_refuse_the_calls_behind_it() -> None:
    scorer = FixedCostFake()
    cfg = SchedulerConfig(BatchLimits(200, 8, True), max_queue_wait=1.0)
    async with BatchScheduler(scorer, cfg) as scheduler:
        for i in range(8):  # one-pair calls, one at a time: ~4 ms per token, as measured
            await scheduler.submit([("q", f"alone{i}")], Truncation.DEFAULT)
        scorer.gate.clear()  # hold the model: only the small batches have been timed
        forwards = scorer.events.count("forward 8")
        # 160 pairs of 19 tokens: 20 full batches, about half a second of model time; read
        # at the small batches' seconds per token it would look like 12 s.
        ahead = asyncio.create_task(
            scheduler.submit([("q", doc(15, "ahead"))] * 160, Truncation.DEFAULT)
        )
        await wait_until(lambda: scorer.events.count("forward 8") > forwards)
        small = asyncio.create_task(scheduler.submit([("q", "behind")], Truncation.DEFAULT))
        await wait_until(lambda: scheduler.queued_requests == 2 or small.done())
        scorer.gate.set()
        assert (await small).logits.size == 1
        await ahead
    assert scheduler.stats.pairs_shed == 0


async def test_length_grouping_does_not_hold_back_the_oldest_request() -> None:
    rng = random.Random(3)
    scorer = FakeScorer()
    requests = [[("q", doc(rng.randint(2, 40), f"r{i}_{j}_")) for j in range(16)] for i in range(6)]
    async with BatchScheduler(scorer, config(budget=160, size=8, lookahead_pairs=512)) as scheduler:
        scorer.gate.clear()
        tasks = []
        for i, pairs in enumerate(requests):
            tasks.append(asyncio.create_task(scheduler.submit(pairs, Truncation.DEFAULT)))
            await wait_until(lambda n=i + 1: scheduler.queued_requests == n)  # type: ignore[misc]
        scorer.gate.set()
        await asyncio.gather(*tasks)
    words = {token_id(f"r0_{j}_0") for j in range(16)}
    last = max(b for b, batch in enumerate(scorer.batches) if any(words & set(r) for r in batch))
    first_request_tokens = sum(len(q.split()) + len(d.split()) + 3 for q, d in requests[0])
    served = [sum(len(row) for row in batch) for batch in scorer.batches]
    # Done within its own work plus the look-ahead reach (lookahead_batches budgets), plus a
    # batch for rounding, not at the end.
    reach = SchedulerConfig(BatchLimits(160, 8, True)).lookahead_batches * 160
    assert sum(served[: last + 1]) <= first_request_tokens + reach + 160 < sum(served) - 4 * 160


async def test_a_scheduler_bug_fails_the_callers_instead_of_hanging_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scorer = FakeScorer()
    async with BatchScheduler(scorer, config()) as scheduler:

        def broken(*args: object, **kwargs: object) -> list[int]:
            raise RuntimeError("policy bug")

        monkeypatch.setattr("rerankd_server.batching.FairQueue.next_batch", broken)
        with pytest.raises(ModelFailure, match="policy bug"):
            await asyncio.wait_for(scheduler.submit([("q", "d")], Truncation.DEFAULT), 5)
        monkeypatch.undo()
        assert (await scheduler.submit([("q", "d")], Truncation.DEFAULT)).logits.size == 1


async def test_a_batch_that_cannot_start_after_the_previous_one_fails_its_callers() -> None:
    scorer = FakeScorer()
    async with BatchScheduler(scorer, config(budget=64, size=4)) as scheduler:
        scorer.gate.clear()  # hold the first batch so the second is prepared meanwhile
        first = asyncio.create_task(scheduler.submit([("q", doc(10, "a"))] * 4, Truncation.DEFAULT))
        await wait_until(lambda: "forward 4" in scorer.events)
        second = asyncio.create_task(
            scheduler.submit([("q", doc(10, "b"))] * 4, Truncation.DEFAULT)
        )
        await wait_until(lambda: scorer.events.count("collate 4") == 2)  # prepared, waiting
        compute = scheduler._compute

        def broken(batch: Any) -> Any:
            raise RuntimeError("start bug")

        scheduler._compute = broken  # type: ignore[method-assign]
        scorer.gate.set()
        assert (await asyncio.wait_for(first, 5)).logits.size == 4
        with pytest.raises(ModelFailure, match="start bug"):
            await asyncio.wait_for(second, 5)
        scheduler._compute = compute  # type: ignore[method-assign]
        assert (await scheduler.submit([("q", "d")], Truncation.DEFAULT)).logits.size == 1


FAULTS = [
    (stage, how)
    for stage, ways in (
        ("tokenize", ("raise", "short", "long")),
        ("collate", ("raise",)),
        ("forward", ("raise", "short", "long")),
        ("activate", ("raise", "short")),
    )
    for how in ways
]


@pytest.mark.parametrize(("stage", "how"), FAULTS, ids=[f"{s}-{h}" for s, h in FAULTS])
async def test_a_fault_in_any_stage_fails_exactly_its_callers(stage: str, how: str) -> None:
    """A scorer that raises or returns the wrong number of results, in any stage, fails the
    callers of that request or batch at once (never leaves them waiting), and only them."""
    scorer = FakeScorer()
    async with BatchScheduler(scorer, config(budget=64, size=1)) as scheduler:
        scorer.gate.clear()  # queue the calls behind a held batch, each in a batch of its own
        held = asyncio.create_task(scheduler.submit([("q", "warm")], Truncation.DEFAULT))
        await wait_until(lambda: scorer.events)
        scorer.fault = (stage, how)
        faulty = asyncio.create_task(scheduler.submit([("q", FAULT_WORD)], Truncation.DEFAULT))
        clean = asyncio.create_task(scheduler.submit([("q", "fine")], Truncation.DEFAULT))
        await wait_until(lambda: faulty.done() or scheduler.queue_pairs == 3)
        scorer.gate.set()
        with pytest.raises(ModelFailure):
            await asyncio.wait_for(faulty, 1.0)
        assert (await asyncio.wait_for(clean, 1.0)).logits.tolist() == [expected_logit("q", "fine")]
        await held
        scorer.fault = None
        after = await asyncio.wait_for(
            scheduler.submit([("q", FAULT_WORD)], Truncation.DEFAULT), 1.0
        )
    assert after.logits.tolist() == [expected_logit("q", FAULT_WORD)]
    assert scheduler.queue_pairs == 0 and scheduler.queue_tokens == 0


async def test_a_fault_while_handing_out_scores_fails_the_batch_and_the_scheduler_goes_on() -> None:
    scorer = FakeScorer()
    async with BatchScheduler(scorer, config()) as scheduler:

        def broken(pairs: int, real: int, computed: int) -> None:
            raise RuntimeError("scatter bug")

        scheduler.stats.on_batch = broken
        with pytest.raises(ModelFailure, match="scatter bug"):
            await asyncio.wait_for(scheduler.submit([("q", "d")], Truncation.DEFAULT), 1.0)
        scheduler.stats.on_batch = None
        assert (await scheduler.submit([("q", "d")], Truncation.DEFAULT)).logits.size == 1


async def test_a_batch_whose_successor_is_prepared_is_handed_back_by_another_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Waking the event loop gives up the GIL: with its next batch ready, the model thread
    leaves that to the hand-back thread and goes on. A last batch comes back from the model
    thread itself. Either way every caller gets its scores."""
    loop = asyncio.get_running_loop()
    wakers: dict[int, str] = {}  # a batch's first pair -> the thread that woke the loop for it
    wake = loop.call_soon_threadsafe

    def spy(callback: Any, *args: Any) -> Any:
        if getattr(callback, "__name__", "") == "_finish":
            wakers[int(args[0].groups[0][1][0])] = threading.current_thread().name
        return wake(callback, *args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", spy)
    scorer = FakeScorer()
    pairs = [("q", doc(5, f"d{i}")) for i in range(12)]
    async with BatchScheduler(scorer, config(budget=64, size=4)) as scheduler:
        scorer.gate.clear()
        task = asyncio.create_task(scheduler.submit(pairs, Truncation.DEFAULT))
        await wait_until(lambda: not scheduler._prepared.empty())  # the second batch waits
        scorer.gate.set()
        outcome = await task
    assert outcome.logits.tolist() == [expected_logit(q, t) for q, t in pairs]
    assert sorted(wakers) == [0, 4, 8]
    assert wakers[0].startswith("rerankd-handback")
    assert wakers[8].startswith("rerankd-model")


async def test_usage_spans_a_calls_batches_in_whatever_order_they_come_back() -> None:
    scorer = FakeScorer()
    pairs = [("q", doc(3)), ("q", doc(4))]
    tokens = scorer.tokenize(pairs, Truncation.DEFAULT)
    job = Job(0, tokens, tokens.lengths(), 0, None, asyncio.get_running_loop())
    first, second = (Batch.of([(job, np.array([i]))], padded=True) for i in (0, 1))
    zero, stats = job.admitted_at, SchedulerStats()
    one = np.ones(1, dtype=np.float32)
    second.deliver(one, one, True, zero + 2.0, zero + 3.0, stats)  # the later batch came back first
    first.deliver(one, one, True, zero + 1.0, zero + 2.5, stats)
    usage = (await job.future).usage
    assert (usage.queue_time_us, usage.inference_time_us, usage.batches) == (
        1_000_000,
        2_000_000,
        2,
    )


class _ShiftedClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock is not ``time.monotonic`` (as uvloop's is not)."""

    def time(self) -> float:
        return super().time() + 1000.0


def test_usage_is_timed_on_the_event_loops_clock_whatever_it_reads() -> None:
    async def call() -> Any:
        scorer = FakeScorer()
        scorer.gate.clear()  # the forward pass waits until the gate opens
        async with BatchScheduler(scorer, config()) as scheduler:
            deadline = asyncio.get_running_loop().time() + 5.0  # on the loop's clock too
            call = asyncio.create_task(
                scheduler.submit([("q", doc(3))], Truncation.DEFAULT, deadline)
            )
            await wait_until(lambda: scorer.events)
            await asyncio.sleep(0.1)
            scorer.gate.set()
            return (await call).usage

    with asyncio.Runner(loop_factory=_ShiftedClockLoop) as runner:
        usage = runner.run(call())
    assert 0 <= usage.queue_time_us < 1_000_000
    assert 100_000 <= usage.inference_time_us < 1_000_000  # the 0.1 s the forward pass waited
