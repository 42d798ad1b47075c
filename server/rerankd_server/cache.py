"""A bounded cache of scores: paging through results and repeated searches skip the model.

Keyed by (model, truncation, query, text) and holding the raw logit with the model's
activation of it (computed on the model thread), so every normalization is served from one
entry without torch on the event loop. Memory is bounded by an estimate of the bytes each
entry holds; the least recently used entries go first.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence

Key = tuple[str, str, str, str]
Scores = tuple[float, float]  # (raw logit, activated score)

_ENTRY_OVERHEAD = 200  # dict slot, tuple, float and key objects, roughly


def _size(key: Key) -> int:
    return _ENTRY_OVERHEAD + sum(sys.getsizeof(part) for part in key)


class ScoreCache:
    """LRU map of pair keys to (raw, activated) scores, bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Key, Scores] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Sequence[Key]) -> list[Scores | None]:
        """Cached scores (None where absent); counts hits and misses."""
        out: list[Scores | None] = []
        with self._lock:
            for key in keys:
                value = self._entries.get(key)
                if value is None:
                    self.misses += 1
                else:
                    self.hits += 1
                    self._entries.move_to_end(key)
                out.append(value)
        return out

    def put_many(self, keys: Sequence[Key], values: Sequence[Scores]) -> None:
        """Insert, evicting least recently used entries beyond the byte bound."""
        with self._lock:
            for key, value in zip(keys, values, strict=True):
                size = _size(key)
                if size > self.max_bytes:
                    continue
                if key not in self._entries:
                    self.bytes += size
                self._entries[key] = value
                self._entries.move_to_end(key)
            while self.bytes > self.max_bytes and self._entries:
                old, _ = self._entries.popitem(last=False)
                self.bytes -= _size(old)
