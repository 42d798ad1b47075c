"""Pure batching policy: the fair queue of every caller's pairs, which of them form the next
model batch, and which calls the queue admits (``Admission``). No torch, no asyncio, no clocks
of its own: the scheduler passes the time in.

Fair queue (``FairQueue``): a request's pairs, sorted longest first, get start tags in tokens
s, s + len(pair 0), ...; its start s is the later of the queue's virtual time (the tag of the
last batch's head) and the previous request's start plus min(its tokens, a quantum of a few
batch budgets). So requests up to a quantum run first come, first served (none finishes later
than it would alone in a queue), a large request is split across batches and later requests
interleave with it after its first quantum, while a stream of later requests advances through
virtual time as fast as the large one and can never starve it. The first ``lookahead_pairs``
of that order, and no further than ``lookahead_batches`` budgets of tokens past the head, form
the window from which ``select_batch`` picks a batch. The queue also estimates the model's
speed from the batches it ran, so work that cannot meet its deadline is dropped before it runs
and a call is refused at admission when the work ahead of it would outlast its deadline.

Batch selection (``select_batch``) from the window's lengths:

* the head of the window (the oldest pair) is always in the batch, so nothing starves;
* the batch never costs more than ``max_batch_tokens`` as the model pays for it (except a
  single pair longer than that, which runs alone): padded
  execution costs ``longest x count``, unpadded execution the sum of lengths;
* within that budget, padded batches take the set with the most real tokens per unit of
  cost, a fixed share of the budget counted as each batch's overhead (which groups similar
  lengths and so cuts padding, without running tiny batches); unpadded batches take pairs in
  queue order.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

import numpy as np
import numpy.typing as npt

from rerankd_server.errors import InvalidRequest, Overloaded

if TYPE_CHECKING:
    from rerankd_server.jobs import SchedulerStats

#: A batch's fixed cost (Python, kernel launches, GEMMs too small to run at full speed) as a
#: share of the token budget, by device, where the warm-up measured none (``fixed_batch_cost``
#: is what the server normally uses; the cost differs by model and by device). A CPU pays
#: little per batch; a GPU running small models is launch-bound, so a batch costs a quarter of
#: the budget or more whatever it holds (the measurements: docs/design.md, "A batch's fixed
#: cost").
CPU_BATCH_OVERHEAD_SHARE = 0.02
CUDA_BATCH_OVERHEAD_SHARE = 0.25
#: Bounds on a measured fixed cost, as a share of the budget (a timing can be noisy).
MEASURED_OVERHEAD_SHARE = (0.005, 0.5)


def fixed_batch_cost(
    small_tokens: int, small_seconds: float, large_tokens: int, large_seconds: float
) -> float:
    """A batch's fixed cost in tokens from two timed batches of the same row length: the line
    through both points splits time into seconds per token and fixed seconds, and the fixed
    seconds are expressed in tokens. When the larger batch ran no slower (a GPU running small
    batches on kernel launches alone), the cost is at least the larger batch: that is returned."""
    per_token = (large_seconds - small_seconds) / (large_tokens - small_tokens)
    if not per_token > 0:
        return float(large_tokens)
    return max(0.0, small_seconds / per_token - small_tokens)


@dataclass(frozen=True)
class BatchLimits:
    """Limits of one batch (a single pair longer than ``max_batch_tokens`` runs alone)."""

    max_batch_tokens: int
    max_batch_size: int
    padded: bool
    overhead_share: float = CPU_BATCH_OVERHEAD_SHARE  # a batch's fixed cost, see above

    @property
    def batch_overhead(self) -> int:
        """A batch's fixed cost in tokens."""
        return max(1, round(self.max_batch_tokens * self.overhead_share))


def batch_cost(lengths: Sequence[int], padded: bool) -> int:
    """Tokens the model computes for a batch of pairs with these lengths."""
    if not lengths:
        return 0
    return cost_of(len(lengths), sum(lengths), max(lengths), padded)


def cost_of(pairs: int, tokens: int, longest: int, padded: bool) -> int:
    """``batch_cost`` of ``pairs`` pairs of ``tokens`` in all, the longest of ``longest``."""
    return longest * pairs if padded else tokens


def select_batch(window: Sequence[int], limits: BatchLimits) -> list[int]:
    """Positions (ascending) in ``window`` of the pairs to run next.

    Args:
        window: pair lengths in fair-queue order; ``window[0]`` is the head.
        limits: the budget and size limits.
    Returns:
        Positions including 0 (when the window is not empty), within the limits; a head
        longer than the whole budget (a model whose inputs outgrow it) runs alone.
    """
    if not window:
        return []
    if window[0] > limits.max_batch_tokens:
        return [0]
    if limits.padded:
        return _select_padded(window, limits)
    return _select_unpadded(window, limits.max_batch_tokens, limits.max_batch_size)


def is_full(lengths: Sequence[int], limits: BatchLimits) -> bool:
    """Whether no further pair of a similar length would fit: worth running without waiting."""
    if len(lengths) >= limits.max_batch_size:
        return True
    room = limits.max_batch_tokens - batch_cost(lengths, limits.padded)
    smallest_addition = max(lengths) if limits.padded else min(lengths)
    return room < smallest_addition


def _select_unpadded(window: Sequence[int], budget: int, max_size: int) -> list[int]:
    chosen: list[int] = []
    total = 0
    for pos, length in enumerate(window):
        if total + length <= budget:
            chosen.append(pos)
            total += length
            if len(chosen) == max_size:
                break
    return chosen


def _select_padded(window: Sequence[int], limits: BatchLimits) -> list[int]:
    """Best set containing the head, by real tokens per unit of cost, then by real tokens.

    The cost of a batch is ``longest x count`` plus its fixed cost (``batch_overhead``), so a
    nearly full batch with little padding beats both a full batch padded to one long pair and
    a tiny batch of equal lengths. For a longest length M the candidates are the head plus
    the k longest other pairs no longer than M (for a given count nothing has more real
    tokens); in length order they form a range. Adding the next, shorter pair helps exactly
    while its length / M exceeds the batch's ratio so far, and once it does not, no later pair
    does (the new ratio lies between the two), so the best k is found by bisection over prefix
    sums. Among equal lengths the older pairs are taken.
    """
    head = window[0]
    budget, max_size = limits.max_batch_tokens, limits.max_batch_size
    overhead = limits.batch_overhead
    # The other pairs, longest first; among equal lengths the older (smaller position) first.
    others = sorted(range(1, len(window)), key=lambda pos: (-window[pos], pos))
    lens = [window[pos] for pos in others]
    prefix = [0]
    for length in lens:
        prefix.append(prefix[-1] + length)

    # Candidates (first index in ``lens``, longest, fewest others): the head as the longest
    # pair with any number of shorter ones, or each longer length that fits the budget.
    candidates = [(bisect_left(lens, -head, key=lambda length: -length), head, 0)]
    candidates += [
        (i, length, 1)
        for i, length in enumerate(lens)
        if head < length <= budget and (i == 0 or lens[i - 1] != length)
    ]
    best: tuple[Fraction, int] | None = None
    best_range = (0, 0)
    for start, longest, fewest in candidates:
        most = min(max_size - 1, budget // longest - 1, len(lens) - start)
        if most < fewest:
            continue

        def tokens(k: int, start: int = start) -> int:
            return head + prefix[start + k] - prefix[start]

        def grows(k: int, start: int = start, longest: int = longest) -> bool:
            """Whether adding the next other pair to head + k others keeps or raises the
            ratio (at an equal ratio more real tokens win)."""
            return lens[start + k] * (longest * (k + 1) + overhead) >= longest * tokens(k)

        low, high = fewest, most  # the largest k whose every addition kept the ratio up
        while low < high:
            mid = (low + high + 1) // 2
            if grows(mid - 1):
                low = mid
            else:
                high = mid - 1
        key = (Fraction(tokens(low), longest * (low + 1) + overhead), tokens(low))
        if best is None or key > best:
            best, best_range = key, (start, start + low)
    low, high = best_range
    return sorted([0, *others[low:high]])


SPEED_WINDOW = 32  # batches the model speed estimate looks back over
SPEED_EVIDENCE = 4  # batches measured before any call is dropped or refused as hopeless
#: The soonest a call refused for a full queue is told to retry: sooner it finds the queue full.
MIN_RETRY_AFTER = 0.05

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SchedulerConfig:
    """Batch limits, the fair queue's reach, and the admission bounds."""

    limits: BatchLimits
    lookahead_pairs: int = 512
    max_queue_pairs: int = 16384
    max_queue_tokens: int = 8_000_000
    cross_request: bool = True  # False: a batch holds one request's pairs (benchmark ablation)
    fair_quantum_batches: int = 4  # a request's head start over later ones, in batch budgets
    lookahead_batches: int = 4  # how far past the head the window reaches, in batch budgets
    max_queue_wait: float = 0.0  # most estimated seconds of work ahead of a call; 0: no bound
    tokenizer_threads: int = 2


class QueuedJob:
    """One request's pairs in the fair queue. Position p is the p-th longest pair
    (``order[p]`` is its index in the request) and ``tags[p]`` its start tag.

    The arrays are built on first use, by the window (``pending``, ``dispatch``) or a deadline
    estimate (``tokens_before``). A call whose pairs all go into one batch at once
    (``take_rest``), the usual case for small calls, never needs them: its bounds and totals
    are Python numbers, where building the arrays took eight array operations, the largest
    share of the policy's cost for a one-document call."""

    def __init__(self, seq: int, lengths: Sequence[int], start: int, deadline: float | None):
        self.seq = seq
        self.deadline = deadline
        self.start = start
        self.size = len(lengths)
        self._given = lengths
        self.total_tokens = int(sum(lengths))
        self.longest, self.shortest = int(max(lengths)), int(min(lengths))
        self.cursor = 0  # every position before it is dispatched
        # Only once pairs were taken out of order: which positions are dispatched.
        self.dispatched: npt.NDArray[np.bool_] | None = None
        self.pending_tokens = self.total_tokens
        self.dead = False  # the caller left, failed or expired: skip what is left

    @cached_property
    def lengths(self) -> IntArray:  # in request order
        return np.asarray(self._given, dtype=np.int64)

    @cached_property
    def order(self) -> IntArray:
        # ndarray methods, not np.* functions: each of those paid the functions' dispatch.
        return (-self.lengths).argsort(kind="stable")

    @cached_property
    def sorted_lengths(self) -> IntArray:
        return self.lengths[self.order]

    @cached_property
    def tags(self) -> IntArray:
        tags = np.zeros(self.size + 1, dtype=np.int64)
        self.sorted_lengths.cumsum(out=tags[1:])
        tags += self.start
        return tags

    def bounds(self) -> tuple[int, int, int, int]:
        """The first and last pending start tags and the longest and shortest pending
        lengths (bounds, once pairs were taken out of order)."""
        if self.cursor == 0:  # nothing dispatched in order yet: known without the arrays
            return self.start, self.last_tag, self.longest, self.shortest
        end = self.size - 1
        tags, lengths = self.tags, self.sorted_lengths
        return int(tags[self.cursor]), int(tags[end]), int(lengths[self.cursor]), int(lengths[end])

    @property
    def last_tag(self) -> int:
        """The start tag of the request's shortest pair, the last in its order."""
        return self.start + self.total_tokens - self.shortest

    def cost(self, idx: IntArray) -> tuple[int, int]:
        """The tokens and the longest length of the pairs ``idx``."""
        if len(idx) == self.size:  # all of them (each pair is dispatched once)
            return self.total_tokens, self.longest
        part = self.lengths[idx]
        return int(part.sum()), int(part.max())

    @property
    def exhausted(self) -> bool:
        return self.cursor >= self.size

    @property
    def waiting(self) -> bool:
        """Pairs still to dispatch, for a caller still there."""
        return not self.dead and not self.exhausted

    def pending(self, limit: int) -> tuple[IntArray, IntArray, IntArray]:
        """The first ``limit`` positions not yet dispatched, their tags and lengths (views
        of the arrays while nothing was taken out of order: no copies per batch)."""
        if self.dispatched is None:
            end = min(self.size, self.cursor + limit)
            window = slice(self.cursor, end)
            return np.arange(self.cursor, end), self.tags[window], self.sorted_lengths[window]
        positions = self.cursor + np.flatnonzero(~self.dispatched[self.cursor :])[:limit]
        return positions, self.tags[positions], self.sorted_lengths[positions]

    def dispatch(self, positions: IntArray) -> IntArray:
        """Mark positions (ascending) as taken into a batch; returns their pair indices.
        ``dispatched`` is kept only once pairs were taken out of order: before that, the
        cursor alone says what is left (a few scalar operations per job and batch)."""
        first, count = int(positions[0]), len(positions)
        in_order = first == self.cursor and int(positions[-1]) == first + count - 1
        if self.dispatched is None and in_order:
            return self._take(first + count)  # the usual case: the next pairs in order
        if self.dispatched is None:
            self.dispatched = np.zeros(self.size, dtype=bool)
            self.dispatched[: self.cursor] = True
        self.dispatched[positions] = True
        self.pending_tokens -= int(self.sorted_lengths[positions].sum())
        rest = np.flatnonzero(~self.dispatched[self.cursor :])
        self.cursor = self.cursor + int(rest[0]) if len(rest) else self.size
        return self.order[positions]

    def take_rest(self) -> IntArray:
        """Dispatch every pending pair (taken in order so far); returns their pair indices,
        in request order when none was taken before."""
        if self.cursor == 0 and self.dispatched is None:
            self.cursor, self.pending_tokens = self.size, 0
            return _indices(self.size)
        return self._take(self.size)

    def _take(self, end: int) -> IntArray:
        """Dispatch the positions from the cursor up to ``end``, all pending."""
        first = self.cursor
        self.pending_tokens -= int(self.tags[end] - self.tags[first])
        self.cursor = end
        return self.order[first:end]

    def tokens_before(self, tag: int) -> int:
        """Pending tokens whose start tags are below ``tag`` (an estimate: pairs already taken
        out of order past the cursor are counted too)."""
        end = int(np.searchsorted(self.tags, tag, side="left"))
        end = min(max(end, self.cursor), self.size)
        return int(self.tags[end] - self.tags[self.cursor])


_iota: IntArray = np.arange(0)


def _indices(count: int) -> IntArray:
    """0 .. count-1: a read-only view of one shared array, grown as needed."""
    global _iota
    if count > len(_iota):
        _iota = np.arange(max(count, 2 * len(_iota), 1024))
        _iota.flags.writeable = False
    return _iota[:count]


J = TypeVar("J", bound=QueuedJob)


class SpeedEstimate:
    """Model seconds per computed token at the fastest of the last ``SPEED_WINDOW`` full
    batches, or None before ``SPEED_EVIDENCE`` of them ran. A drop cannot be undone, so the
    estimate errs towards keeping work: a mean let one slow batch (a first call at a new shape,
    a CPU shared with tokenization) fail calls that would have finished, while the fastest
    recent batch still follows a device that stays slower. Only full batches (at the size cap,
    or at half the token budget or more) count: a small one's time is mostly the batch's fixed
    cost, so after a stretch of one-document calls its seconds per token overstated what a
    long queue, run in full batches, takes by 50 times, and refused every call behind one
    large request."""

    def __init__(self, limits: BatchLimits) -> None:
        self._limits = limits
        self._per_token: deque[float] = deque(maxlen=SPEED_WINDOW)
        self._fastest: float | None = None  # kept per batch, read several times per call

    def record(self, seconds: float, pairs: int, computed_tokens: int) -> None:
        full = (
            pairs >= self._limits.max_batch_size
            or 2 * computed_tokens >= self._limits.max_batch_tokens
        )
        if full and computed_tokens:
            self._per_token.append(seconds / computed_tokens)
            if len(self._per_token) >= SPEED_EVIDENCE:
                self._fastest = min(self._per_token)

    def seconds_per_token(self) -> float | None:
        return self._fastest


@dataclass(frozen=True)
class _Pending:
    """What the live jobs have left to dispatch, gathered in one pass: how many pairs and
    tokens, the longest and shortest pair, the first and last start tag (bounds, where pairs
    were taken out of order), and whether none was."""

    pairs: int
    tokens: int
    longest: int
    shortest: int
    first_tag: int
    last_tag: int
    in_order: bool

    @classmethod
    def of(cls, live: Sequence[QueuedJob]) -> _Pending:
        pairs = tokens = 0
        first, last, longest, shortest = live[0].bounds()
        in_order = True
        for job in live:
            head, tail, top, bottom = job.bounds()
            pairs += job.size - job.cursor
            tokens += job.pending_tokens
            first, last = min(first, head), max(last, tail)
            longest, shortest = max(longest, top), min(shortest, bottom)
            in_order = in_order and job.dispatched is None
        return cls(pairs, tokens, longest, shortest, first, last, in_order)


class FairQueue(Generic[J]):
    """Start-time fair queuing of every admitted request's pairs, in token units (see the
    module docstring); the scheduler adds jobs and takes batches."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.jobs: list[J] = []  # in arrival order
        self.speed = SpeedEstimate(config.limits)
        self._vtime = 0
        self._next_start = 0
        budget = config.limits.max_batch_tokens
        self._quantum = config.fair_quantum_batches * budget
        self._horizon = config.lookahead_batches * budget

    def start_tag(self, tokens: int) -> int:
        """The start tag of a request of ``tokens`` arriving now (call once per request)."""
        start = max(self._vtime, self._next_start)
        self._next_start = start + min(tokens, self._quantum)
        return start

    def add(self, job: J) -> None:
        self.jobs.append(job)

    @property
    def waiting(self) -> bool:
        """Whether any job has pairs still to dispatch."""
        return any(job.waiting for job in self.jobs)

    def live(self) -> list[J]:
        """Jobs with pairs still to dispatch; forgets the others."""
        self.jobs = [job for job in self.jobs if job.waiting]
        return self.jobs

    def refusal(
        self, now: float, deadline: float | None, own_tokens: int, in_flight_tokens: int
    ) -> tuple[str, float] | None:
        """Why to refuse a call at once, and in how many seconds a retry may succeed; None to
        admit it. Refused: the work queued ahead would take longer than ``max_queue_wait``,
        or, with the call's own ``own_tokens`` (0 before they are known), end after its
        deadline. A call whose own work alone outlasts its deadline is left to ``expire``
        (DEADLINE_EXCEEDED): no retry would help. ``in_flight_tokens``: every admitted token,
        a bound checked first so the common case needs no scan of the queue."""
        rate = self.speed.seconds_per_token()
        if rate is None:
            return None
        most = self.config.max_queue_wait or math.inf
        left = math.inf if deadline is None else deadline - now
        own = own_tokens * rate
        if left <= own or (in_flight_tokens + own_tokens) * rate <= min(most, left):
            return None
        start = max(self._vtime, self._next_start)
        ahead = sum(job.tokens_before(start) for job in self.live()) * rate
        if ahead > most:
            return f"about {ahead:.3f}s of queued work ahead, more than {most}s", ahead - most
        if ahead + own > left:
            why = f"about {ahead:.3f}s of queued work ahead, and {left:.3f}s to the deadline"
            return why, ahead + own - left
        return None

    def expire(self, now: float) -> list[tuple[J, str]]:
        """Jobs to drop before the next batch: deadline passed (message ""), or their own
        pending work plus the work queued ahead of their last pair, at the estimated speed,
        would end after their deadline (message says so). Marks them dead."""
        live = self.live()
        if all(job.deadline is None for job in live):
            return []
        rate = self.speed.seconds_per_token()
        queued = sum(job.pending_tokens for job in live)
        dropped: list[tuple[J, str]] = []
        for job in live:
            if job.deadline is None:
                continue
            if now >= job.deadline:
                dropped.append((job, ""))
            elif rate is not None and now + queued * rate >= job.deadline:  # else all fits
                last_tag = job.last_tag
                ahead = sum(o.tokens_before(last_tag) for o in live if o is not job and not o.dead)
                needed = (job.pending_tokens + ahead) * rate
                if now + needed >= job.deadline:
                    dropped.append(
                        (
                            job,
                            f"cannot finish before the deadline: about {needed:.3f}s of model "
                            f"time for this call and the work queued ahead of it, and "
                            f"{job.deadline - now:.3f}s to go",
                        )
                    )
        for job, _ in dropped:
            job.dead = True
        return dropped

    def _could_fill(self, left: _Pending) -> bool:
        """Whether the queued pairs could make a full batch (``is_full``): a bound from their
        count, tokens and longest length, cheap enough to check on every arrival while the
        model is busy, before the window is built."""
        limits = self.config.limits
        if left.pairs >= limits.max_batch_size:
            return True
        if limits.padded:  # full: longest x (count + 1) over the budget
            return left.longest * (left.pairs + 1) > limits.max_batch_tokens
        return left.tokens + left.longest > limits.max_batch_tokens  # no room for the shortest

    def next_batch(self, model_busy: bool) -> list[tuple[J, IntArray]]:
        """The next batch as (job, pair indices) groups, or [] when there is nothing to run.
        While the model is busy only a full batch is taken: more pairs may arrive before the
        model is free, and the batch is decided then."""
        live = self.live()
        if not live:
            return []
        left = _Pending.of(live)
        if model_busy and not self._could_fill(left):
            return []
        if not model_busy and self._all_fit(left, len(live)):
            self._vtime = max(self._vtime, left.first_tag)
            return [(job, job.take_rest()) for job in live]
        return self._select(live, model_busy)

    def _all_fit(self, left: _Pending, jobs: int) -> bool:
        """Whether the next batch is every pending pair: one batch holds them, the window
        reaches them all, and selection takes them all (unpadded, or all of one length). It
        is the usual case for small calls, and this check costs a few scalar operations per
        job where building the window costs a dozen array operations."""
        limits = self.config.limits
        if not left.in_order or (jobs > 1 and not self.config.cross_request):
            return False  # pairs taken out of order are left to the window
        if left.pairs > min(limits.max_batch_size, self.config.lookahead_pairs):
            return False
        if left.last_tag >= left.first_tag + self._horizon:
            return False
        if limits.padded:
            fits = left.longest * left.pairs <= limits.max_batch_tokens
            return fits and left.longest == left.shortest
        return left.tokens <= limits.max_batch_tokens

    def _select(self, live: list[J], model_busy: bool) -> list[tuple[J, IntArray]]:
        """The window and ``select_batch``'s choice from it (see ``next_batch``)."""
        limit = self.config.lookahead_pairs
        pending = [job.pending(limit) for job in live]
        owner = np.repeat(np.arange(len(live)), [len(p) for p, _, _ in pending])
        positions = np.concatenate([p for p, _, _ in pending])
        tags = np.concatenate([t for _, t, _ in pending])
        window = np.lexsort((owner, tags))[:limit]  # tag order, ties by arrival
        window = window[tags[window] < tags[window[0]] + self._horizon]
        if not self.config.cross_request:
            window = window[owner[window] == owner[window[0]]]
        lengths = np.concatenate([n for _, _, n in pending])[window]
        picked = select_batch(lengths.tolist(), self.config.limits)
        if model_busy and not is_full(lengths[picked].tolist(), self.config.limits):
            return []
        chosen = window[picked]
        self._vtime = max(self._vtime, int(tags[window[0]]))
        chosen = chosen[np.argsort(owner[chosen], kind="stable")]  # by job, in tag order
        owners = owner[chosen]
        cuts = np.flatnonzero(owners[1:] != owners[:-1]) + 1
        starts = [0, *cuts.tolist()]
        return [
            (live[k], live[k].dispatch(part))
            for k, part in zip(
                owners[starts].tolist(), np.split(positions[chosen], cuts), strict=True
            )
        ]


class Admission:
    """The admitted, unanswered work against the queue's bounds: a call that would break
    ``max_queue_pairs`` or ``max_queue_tokens``, or wait longer than ``max_queue_wait`` or its
    deadline allow for the work ahead (``FairQueue.refusal``), is refused before it queues.
    A call above a bound on its own is InvalidRequest (no retry can help), one the queue has
    no room for now is Overloaded, with a hint of when to retry; ``stats.pairs_shed`` counts
    the latter's pairs."""

    def __init__(self, queue: FairQueue[Any], stats: SchedulerStats) -> None:
        self._queue = queue
        self._config = queue.config
        self._stats = stats
        self.pairs = 0  # admitted and not yet answered
        self.tokens = 0
        self._counted_pairs = 0  # of those, the pairs whose tokens are counted (tokenized)
        self._pair_tokens: float | None = None  # recent tokens per pair, once a call was counted

    def check(self, count: int, deadline: float | None, now: float) -> None:
        """Raise what admitting ``count`` more pairs would break, their tokens not yet known."""
        bound = self._config.max_queue_pairs
        if count > bound:
            raise InvalidRequest(f"{count} pairs exceed the queue bound of {bound}")
        if self.pairs + count > bound:
            self._shed(count, f"queue full ({self.pairs} pairs waiting)")
        self.check_wait(count, deadline, now)

    def admit(self, count: int, deadline: float | None, now: float) -> None:
        """Count ``count`` pairs in, or raise what they would break (``check``)."""
        self.check(count, deadline, now)
        self.pairs += count

    def reserve(self, count: int, tokens: int) -> int:
        """Count the ``tokens`` of ``count`` admitted pairs in and return them, or raise a
        token bound."""
        bound = self._config.max_queue_tokens
        if tokens > bound:
            raise InvalidRequest(f"{tokens} tokens exceed the queue bound of {bound}")
        if self.tokens + tokens > bound:
            self._shed(count, f"queue full ({self.tokens} tokens waiting)")
        self.tokens += tokens
        if tokens:  # ``release`` tells a counted call by its tokens
            self._counted_pairs += count
            per_pair = tokens / count
            last = self._pair_tokens
            self._pair_tokens = per_pair if last is None else last + (per_pair - last) / 8
        return tokens

    def release(self, count: int, tokens: int) -> None:
        """Count an answered (or failed) call out, with the tokens ``reserve`` gave it (0 when
        it got none)."""
        self.pairs -= count
        self.tokens -= tokens
        if tokens:
            self._counted_pairs -= count

    def check_wait(
        self, count: int, deadline: float | None, now: float, own_tokens: int = 0
    ) -> None:
        """Refuse a call when the queue ahead makes it wait too long or end late."""
        if deadline is None and not self._config.max_queue_wait:
            return  # no bound to break
        refusal = self._queue.refusal(now, deadline, own_tokens, self.tokens)
        if refusal is not None:
            self._shed(count, *refusal)

    def queued_tokens(self) -> float:
        """The admitted tokens, those of calls still tokenizing estimated from recent calls
        (a batch's average pair before any): they are most of a queue that filled at once."""
        limits = self._config.limits
        per_pair = self._pair_tokens or limits.max_batch_tokens / limits.max_batch_size
        return self.tokens + (self.pairs - self._counted_pairs) * per_pair

    def _shed(self, count: int, why: str, retry_after: float | None = None) -> NoReturn:
        self._stats.pairs_shed += count
        rate = self._queue.speed.seconds_per_token()
        if retry_after is None and rate is not None:  # about when the queue has drained
            retry_after = max(MIN_RETRY_AFTER, self.queued_tokens() * rate)
        raise Overloaded(f"{why}; retry later", retry_after=retry_after)
