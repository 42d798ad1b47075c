"""Properties of the pure batching policy (no torch, no asyncio)."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerankd_server.batching import (
    MIN_RETRY_AFTER,
    Admission,
    BatchLimits,
    FairQueue,
    QueuedJob,
    SchedulerConfig,
    SpeedEstimate,
    batch_cost,
    fixed_batch_cost,
    is_full,
    select_batch,
)
from rerankd_server.errors import InvalidRequest, Overloaded
from rerankd_server.jobs import SchedulerStats

MAX_LEN = 64


@st.composite
def windows_and_limits(draw: st.DrawFn, max_window: int = 40) -> tuple[list[int], BatchLimits]:
    window = draw(st.lists(st.integers(1, MAX_LEN), min_size=1, max_size=max_window))
    budget = draw(st.integers(MAX_LEN, 8 * MAX_LEN))
    size = draw(st.integers(1, 16))
    return window, BatchLimits(budget, size, padded=draw(st.booleans()))


@given(windows_and_limits())
def test_selection_respects_limits_and_keeps_the_head(case: tuple[list[int], BatchLimits]) -> None:
    window, limits = case
    chosen = select_batch(window, limits)
    assert chosen[0] == 0
    assert chosen == sorted(set(chosen))
    assert all(0 <= pos < len(window) for pos in chosen)
    assert len(chosen) <= limits.max_batch_size
    assert batch_cost([window[p] for p in chosen], limits.padded) <= limits.max_batch_tokens


def efficiency(lengths: list[int], limits: BatchLimits) -> tuple[Fraction, int]:
    """Real tokens per unit of cost (padded cost plus the per-batch overhead), then tokens."""
    cost = batch_cost(lengths, True) + limits.batch_overhead
    return Fraction(sum(lengths), cost), sum(lengths)


@given(windows_and_limits(max_window=9), st.sampled_from([0.0, 0.02, 0.1, 0.5]))
def test_padded_selection_is_the_most_efficient_set(
    case: tuple[list[int], BatchLimits], share: float
) -> None:
    window, limits = case
    limits = BatchLimits(limits.max_batch_tokens, limits.max_batch_size, True, share)
    chosen = select_batch(window, limits)
    best = efficiency([window[0]], limits)
    others = range(1, len(window))
    for size in range(1, min(limits.max_batch_size, len(window))):
        for rest in itertools.combinations(others, size):
            lengths = [window[0]] + [window[p] for p in rest]
            if batch_cost(lengths, True) <= limits.max_batch_tokens:
                best = max(best, efficiency(lengths, limits))
    assert efficiency([window[p] for p in chosen], limits) == best


def test_fixed_batch_cost_from_two_timed_batches() -> None:
    # 1 ms per batch and 1 us per token: a fixed cost of 1,000 tokens.
    assert fixed_batch_cost(128, 1.128e-3, 1024, 2.024e-3) == pytest.approx(1000)
    assert fixed_batch_cost(128, 0.128e-3, 1024, 1.024e-3) == pytest.approx(0)
    # A launch-bound device: the larger batch was no slower, so it costs at least its tokens.
    assert fixed_batch_cost(128, 2e-3, 1024, 2e-3) == 1024
    assert fixed_batch_cost(128, 2e-3, 1024, 1.9e-3) == 1024


def test_a_full_batch_beats_a_tiny_exact_one_and_a_padded_one() -> None:
    limits = BatchLimits(max_batch_tokens=400, max_batch_size=64, padded=True)
    # Ten pairs of 40 fill the budget exactly; one pair of 40 alone pays the whole overhead;
    # the 100-token pair would pad the batch it joins.
    window = [40] * 10 + [100, 100, 100, 10]
    assert select_batch(window, limits) == list(range(10))


def test_padded_selection_groups_similar_lengths() -> None:
    window = [10, 60, 11, 59, 12, 61, 10, 9]
    limits = BatchLimits(max_batch_tokens=64, max_batch_size=8, padded=True, overhead_share=0.1)
    chosen = select_batch(window, limits)
    # 64 tokens of padded budget: the head (10) with other short pairs, not a long one.
    assert len(chosen) >= 3
    assert set(chosen) <= {0, 2, 4, 6, 7}


def test_equal_lengths_prefer_older_pairs() -> None:
    window = [5, 5, 5, 5, 5, 5]
    chosen = select_batch(window, BatchLimits(max_batch_tokens=15, max_batch_size=8, padded=True))
    assert chosen == [0, 1, 2]


def test_unpadded_selection_takes_queue_order_first_fit() -> None:
    window = [30, 40, 20, 10, 50]
    chosen = select_batch(window, BatchLimits(max_batch_tokens=65, max_batch_size=8, padded=False))
    assert chosen == [0, 2, 3]


def test_a_head_longer_than_the_budget_runs_alone() -> None:
    for padded in (True, False):
        limits = BatchLimits(max_batch_tokens=50, max_batch_size=4, padded=padded)
        assert select_batch([100, 3, 3], limits) == [0]


def test_is_full() -> None:
    limits = BatchLimits(max_batch_tokens=100, max_batch_size=4, padded=True)
    assert is_full([10, 10, 10, 10], limits)  # size cap
    assert is_full([30, 30, 30], limits)  # another 30 would cost 120
    assert not is_full([10, 10], limits)
    assert batch_cost([], True) == 0


def test_only_full_batches_tell_the_model_speed() -> None:
    speed = SpeedEstimate(BatchLimits(max_batch_tokens=100, max_batch_size=8, padded=False))
    for _ in range(10):  # one pair of 5 tokens: the time is the batch's fixed cost
        speed.record(0.002, 1, 5)
    assert speed.seconds_per_token() is None
    for pairs, tokens in ((8, 40), (2, 50), (3, 60), (8, 80)):  # at the size cap or half budget
        speed.record(0.004, pairs, tokens)
    assert speed.seconds_per_token() == pytest.approx(0.004 / 80)


def _queue_with_a_large_job() -> tuple[FairQueue[QueuedJob], QueuedJob]:
    """A queue whose speed is known (0.1 ms per token) holding 1 s of work without deadline;
    a quantum is 4 budgets of 100 tokens."""
    queue: FairQueue[QueuedJob] = FairQueue(SchedulerConfig(BatchLimits(100, 8, padded=False)))
    for _ in range(4):
        queue.speed.record(0.01, 8, 100)
    big = QueuedJob(0, [10] * 1000, queue.start_tag(10_000), None)
    queue.add(big)
    return queue, big


def test_a_job_that_fair_queuing_lets_finish_in_time_is_kept() -> None:
    queue, big = _queue_with_a_large_job()
    # The whole queue would outlast the deadline, but this job starts one quantum (400 tokens,
    # 0.04 s) into the large one: it finishes in time and must not be dropped.
    small = QueuedJob(1, [10], queue.start_tag(10), deadline=0.2)
    queue.add(small)
    assert queue.expire(now=0.0) == []
    assert not small.dead and not big.dead
    # A call arriving now waits for the 410 tokens of the large one before its start, and the
    # small one.
    refusal = queue.refusal(now=0.0, deadline=0.03, own_tokens=10, in_flight_tokens=10_020)
    assert refusal is not None and "queued work ahead" in refusal[0]
    assert refusal[1] == pytest.approx(0.1 * 1e-3 * 430 - 0.03)


def test_a_job_that_cannot_finish_in_time_is_dropped_with_the_reason() -> None:
    queue, big = _queue_with_a_large_job()
    hopeless = QueuedJob(1, [10] * 10, queue.start_tag(100), deadline=0.03)
    passed = QueuedJob(2, [10], queue.start_tag(10), deadline=0.0)
    queue.add(hopeless)
    queue.add(passed)
    dropped = dict(queue.expire(now=0.0))
    assert dropped[passed] == ""  # the deadline passed: its caller reports that
    assert "cannot finish before the deadline" in dropped[hopeless]
    assert hopeless.dead and passed.dead and not big.dead
    assert queue.live() == [big]


@given(
    st.lists(st.lists(st.integers(1, MAX_LEN), min_size=1, max_size=30), min_size=1, max_size=8),
    windows_and_limits(max_window=1),
    st.integers(1, 64),
)
def test_the_fair_queue_dispatches_every_pair_once_within_the_limits(
    requests: list[list[int]], case: tuple[list[int], BatchLimits], lookahead: int
) -> None:
    _, limits = case
    queue: FairQueue[QueuedJob] = FairQueue(SchedulerConfig(limits, lookahead_pairs=lookahead))
    jobs = []
    for seq, lengths in enumerate(requests):
        jobs.append(QueuedJob(seq, lengths, queue.start_tag(sum(lengths)), None))
        queue.add(jobs[-1])
    taken: dict[int, list[int]] = {job.seq: [] for job in jobs}
    while groups := queue.next_batch(model_busy=False):
        lengths = [requests[job.seq][i] for job, idx in groups for i in idx.tolist()]
        assert len(lengths) <= limits.max_batch_size
        assert batch_cost(lengths, limits.padded) <= limits.max_batch_tokens
        for job, idx in groups:
            taken[job.seq] += idx.tolist()
    assert all(sorted(taken[job.seq]) == list(range(len(requests[job.seq]))) for job in jobs)
    assert all(job.exhausted and job.pending_tokens == 0 for job in jobs)


@given(
    st.lists(st.lists(st.integers(1, MAX_LEN), min_size=1, max_size=12), min_size=1, max_size=6),
    windows_and_limits(max_window=1),
)
def test_a_busy_model_gets_a_batch_exactly_when_a_full_one_can_be_formed(
    requests: list[list[int]], case: tuple[list[int], BatchLimits]
) -> None:
    """The cheap bound that skips building the window never hides a full batch."""
    _, limits = case
    busy: FairQueue[QueuedJob] = FairQueue(SchedulerConfig(limits))
    idle: FairQueue[QueuedJob] = FairQueue(SchedulerConfig(limits))
    for seq, lengths in enumerate(requests):
        for queue in (busy, idle):
            queue.add(QueuedJob(seq, lengths, queue.start_tag(sum(lengths)), None))
    chosen = idle.next_batch(model_busy=False)
    lengths = [requests[job.seq][i] for job, idx in chosen for i in idx.tolist()]
    taken = busy.next_batch(model_busy=True)
    assert bool(taken) == is_full(lengths, limits)


@given(
    st.lists(st.lists(st.integers(1, MAX_LEN), min_size=1, max_size=12), min_size=1, max_size=6),
    windows_and_limits(max_window=1),
    st.lists(st.booleans(), min_size=1, max_size=6),
    st.booleans(),
)
def test_taking_everything_at_once_is_what_the_window_would_choose(
    requests: list[list[int]],
    case: tuple[list[int], BatchLimits],
    equal_lengths: list[bool],
    cross_request: bool,
) -> None:
    """``next_batch``'s shortcut (every pending pair, when they all fit) picks exactly the
    batch and advances virtual time exactly as the window and ``select_batch`` do (the same
    pairs of the same jobs; it lists a job's pairs in request order, the window longest first)."""
    _, limits = case
    config = SchedulerConfig(limits, lookahead_pairs=32, cross_request=cross_request)
    fast: FairQueue[QueuedJob] = FairQueue(config)
    full: FairQueue[QueuedJob] = FairQueue(config)
    for seq, lengths in enumerate(requests):
        if equal_lengths[seq % len(equal_lengths)]:
            lengths = [lengths[0]] * len(lengths)  # the padded shortcut needs one length
        for queue in (fast, full):
            queue.add(QueuedJob(seq, lengths, queue.start_tag(sum(lengths)), None))
    while True:
        taken = [(job.seq, sorted(idx.tolist())) for job, idx in fast.next_batch(model_busy=False)]
        live = full.live()
        chosen = (
            [(job.seq, sorted(idx.tolist())) for job, idx in full._select(live, False)]
            if live
            else []
        )
        assert taken == chosen
        assert fast._vtime == full._vtime
        if not taken:
            break


@given(st.lists(st.tuples(st.integers(1, 12), st.integers(1, 120), st.booleans()), max_size=40))
def test_admission_keeps_the_queue_within_its_bounds(calls: list[tuple[int, int, bool]]) -> None:
    """Calls of (pairs, tokens, answered at once) against bounds of 10 pairs and 100 tokens:
    pairs are checked on arrival, tokens once known; a call above a bound alone is invalid,
    one the queue has no room for now is shed (its pairs counted); neither changes what the
    queue holds, and every call that fits is admitted."""
    stats = SchedulerStats()
    config = SchedulerConfig(BatchLimits(50, 8, False), max_queue_pairs=10, max_queue_tokens=100)
    admission = Admission(FairQueue(config), stats)
    held: list[tuple[int, int]] = []
    shed = 0
    for pairs, tokens, answered in calls:
        held_pairs, held_tokens = sum(p for p, _ in held), sum(t for _, t in held)
        expected: type[Exception] | None = None
        if pairs > 10 or (held_pairs + pairs <= 10 and tokens > 100):
            expected = InvalidRequest
        elif held_pairs + pairs > 10 or held_tokens + tokens > 100:
            expected = Overloaded
        outcome: type[Exception] | None = None
        admitted = False
        try:
            admission.admit(pairs, None, now=0.0)
            admitted = True
            assert admission.reserve(pairs, tokens) == tokens
            held.append((pairs, tokens))
        except (InvalidRequest, Overloaded) as refused:
            outcome = type(refused)
            if admitted:  # its tokens were refused: the call ends, as a submit's does
                admission.release(pairs, 0)
        assert outcome is expected
        if outcome is Overloaded:
            shed += pairs
        if answered and outcome is None:
            admission.release(*held.pop())
        assert (admission.pairs, admission.tokens) == (
            sum(p for p, _ in held),
            sum(t for _, t in held),
        )
    assert stats.pairs_shed == shed
    for call in held:
        admission.release(*call)
    assert (admission.pairs, admission.tokens) == (0, 0)


def test_a_call_refused_behind_calls_still_tokenizing_is_told_to_wait_for_them() -> None:
    """Admitted calls count their pairs at once and their tokens only once tokenized: behind
    a queue filled by calls still tokenizing, a hint from the counted tokens alone said 1 ms."""
    queue, _ = _queue_with_a_large_job()  # 0.1 ms per token; batches of 8 pairs, 100 tokens
    fresh = Admission(queue, SchedulerStats())
    fresh.admit(16384, None, now=0.0)
    with pytest.raises(Overloaded, match="16384 pairs waiting") as full:
        fresh.check(1, None, now=0.0)
    assert full.value.retry_after == pytest.approx(16384 * 100 / 8 * 1e-4)  # a batch's pairs
    admission = Admission(queue, SchedulerStats())
    admission.admit(100, None, now=0.0)
    admission.release(100, admission.reserve(100, 1000))  # 10 tokens a pair, answered
    for _ in range(16):
        admission.admit(1024, None, now=0.0)  # none tokenized yet
    with pytest.raises(Overloaded, match="16384 pairs waiting") as full:
        admission.check(1, None, now=0.0)
    assert full.value.retry_after == pytest.approx(16384 * 10 * 1e-4)
    admission.reserve(1024, 2048)  # one call tokenized: 2 tokens a pair, then the rest as recent
    with pytest.raises(Overloaded) as full:
        admission.check(1, None, now=0.0)
    per_pair = 10 + (2 - 10) / 8
    assert full.value.retry_after == pytest.approx((2048 + 15 * 1024 * per_pair) * 1e-4)


def test_a_refused_call_is_never_told_to_retry_at_once() -> None:
    queue, _ = _queue_with_a_large_job()
    admission = Admission(queue, SchedulerStats())
    admission.admit(16384, None, now=0.0)
    admission.reserve(16384, 1)  # one token for them all: the queue drains in 0.1 ms
    with pytest.raises(Overloaded) as full:
        admission.check(1, None, now=0.0)
    assert full.value.retry_after == MIN_RETRY_AFTER


def test_a_refused_call_is_told_when_the_queue_will_have_drained() -> None:
    queue, _ = _queue_with_a_large_job()  # 0.1 ms per token
    stats = SchedulerStats()
    admission = Admission(queue, stats)
    admission.admit(1000, None, now=0.0)
    admission.reserve(1000, 10_000)
    with pytest.raises(Overloaded, match="1000 pairs waiting") as full:
        admission.check(16384 - 999, None, now=0.0)
    assert full.value.retry_after == pytest.approx(10_000 * 1e-4)
    # A deadline the work ahead would outlast (the large job's first quantum, 400 tokens):
    # refused, with the time it falls short by.
    with pytest.raises(Overloaded, match="to the deadline") as late:
        admission.check(1, deadline=0.03, now=0.0)
    assert late.value.retry_after == pytest.approx(400 * 1e-4 - 0.03)
    admission.check(1, deadline=0.05, now=0.0)
    assert stats.pairs_shed == 16384 - 999 + 1
    admission.check(1, deadline=None, now=0.0)  # no deadline and no longest wait: admitted
