"""Pure batching policy: which queued pairs form the next model batch.

No torch, no asyncio: the scheduler hands in the lengths of the first pairs of its fair
queue (the look-ahead window, oldest first) and gets back the positions to run. The rules:

* the head of the window (the oldest pair) is always in the batch, so nothing starves;
* the batch never costs more than ``max_batch_tokens`` as the model pays for it (except a
  single pair longer than that, which runs alone): padded
  execution costs ``longest x count``, unpadded execution the sum of lengths;
* within that budget, padded batches take the set with the most real tokens (which groups
  similar lengths and so cuts padding); unpadded batches take pairs in queue order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchLimits:
    """Limits of one batch (a single pair longer than ``max_batch_tokens`` runs alone)."""

    max_batch_tokens: int
    max_batch_size: int
    padded: bool


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
        return _select_padded(window, limits.max_batch_tokens, limits.max_batch_size)
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


def _select_padded(window: Sequence[int], budget: int, max_size: int) -> list[int]:
    """Best set containing the head, by real tokens then by less padding.

    For a batch whose longest pair has length M the best choice is the head plus the
    ``min(max_size, budget // M) - 1`` longest other pairs no longer than M. In length
    order those form a contiguous range, so each candidate M costs O(1) with prefix sums.
    Among equal lengths the older pairs sit at the range's upper end and win.
    """
    head_len = window[0]
    order = sorted(range(len(window)), key=lambda pos: (window[pos], -pos))
    lens = [window[pos] for pos in order]
    prefix = [0]
    for length in lens:
        prefix.append(prefix[-1] + length)
    head_rank = order.index(0)

    best_key: tuple[int, int] | None = None
    best_range = (head_rank, head_rank)
    for top, longest in enumerate(lens):
        last_of_value = top + 1 == len(lens) or lens[top + 1] != longest
        if longest < head_len or longest > budget or not last_of_value:
            continue
        count = min(max_size, budget // longest, top + 1)
        low = top - count + 1
        tokens = prefix[top + 1] - prefix[low]
        if head_rank < low:
            tokens += head_len - lens[low]
        key = (tokens, -longest * count)
        if best_key is None or key > best_key:
            best_key = key
            best_range = (low, top)

    low, top = best_range
    chosen = set(order[low : top + 1])
    if 0 not in chosen:
        chosen.discard(order[low])
        chosen.add(0)
    return sorted(chosen)
