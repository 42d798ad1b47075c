"""Counters of what the bridge did, so a dashboard shows how often reranking was skipped.

One process-wide :data:`STATS` by default; the proxy serves it in the Prometheus text format
at ``GET /_rerankd/metrics``. Thread-safe, because the sync adapter may run in many threads.
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["STATS", "RerankStats"]


class RerankStats:
    """Searches by outcome: ``reranked``, ``below_window`` and ``skipped`` by reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcomes: Counter[tuple[str, str]] = Counter()

    def count(self, status: str, reason: str = "") -> None:
        """Count one search that ended with ``status`` (and ``reason`` when skipped)."""
        with self._lock:
            self._outcomes[status, reason] += 1

    def get(self, status: str, reason: str = "") -> int:
        """How many searches ended with ``status`` and ``reason`` so far."""
        with self._lock:
            return self._outcomes[status, reason]

    def prometheus(self) -> str:
        """The counters in the Prometheus text exposition format."""
        name = "rerankd_bridge_searches_total"
        lines = [
            f"# HELP {name} Searches the bridge handled, by outcome (skipped: first-stage order).",
            f"# TYPE {name} counter",
        ]
        with self._lock:
            items = sorted(self._outcomes.items())
        for (status, reason), value in items:
            lines.append(f'{name}{{status="{status}",reason="{reason}"}} {value}')
        return "\n".join(lines) + "\n"


STATS = RerankStats()
"""The counters every adapter uses unless given others."""
