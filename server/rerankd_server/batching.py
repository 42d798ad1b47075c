"""Pure batching policy: which queued pairs form the next model batch.

No torch, no asyncio: the scheduler hands in the lengths of the first pairs of its fair
queue (the look-ahead window, oldest first) and gets back the positions to run. The rules:

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

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

#: A batch's fixed cost (Python, kernel launches, GEMMs too small to run at full speed) as a
#: share of the token budget, by device, where the warm-up measured none (``fixed_batch_cost``
#: is what the server normally uses; the cost differs by model and by device).
#: CPU: an fp32 batch of 180 tokens ran 25% slower per token than one of 720-1,440 (Ettin-17M
#: shape), a fixed cost of about 60 tokens, 1.5% of the 4,096 default; 0.02 against the earlier
#: 0.1 raised closed-loop padding efficiency from 0.86-0.89 to 0.92-0.94 and throughput about
#: 8% (docs/design.md). CUDA (bf16, H200, measured by the warm-up): Ettin-1B shape 3,550-3,880
#: tokens of the 16,384 budget (22-24%); the 17M shape and MiniLM-L6 ran a quarter budget no
#: slower than one 128-token row (launch-bound: at least 25%), MiniLM-L6 in fp32 50% or more.
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
    return max(lengths) * len(lengths) if padded else sum(lengths)


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
