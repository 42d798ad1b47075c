"""A deterministic scorer without torch, for scheduler and servicer tests.

A pair's tokens are its words (query then text) plus 3 special tokens; its raw logit is a
fixed function of those tokens, so any reordering or mixing of pairs shows in the scores.
The model thread can be held with ``gate`` to build queues on purpose, and every batch the
"model" computes is recorded. ``fault`` makes one stage misbehave for pairs holding the word
``FAULT_WORD``: ``(stage, how)`` with stage tokenize, collate, forward or activate and how
``raise``, ``short`` (one result too few) or ``long`` (one too many).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rerankd_server.scoring.base import FloatArray, ScorerInfo, TokenizedPairs, Truncation

FAULT_WORD = "boom"


def token_id(word: str) -> int:
    return 10 + zlib.crc32(word.encode()) % 50_000


def expected_logit(query: str, text: str, max_tokens: int = 64) -> float:
    """The logit FakeScorer gives the pair (after end truncation)."""
    ids = FakeScorer(max_tokens=max_tokens).tokenize([(query, text)], Truncation.END).ids[0]
    return float(np.float32(_logit(ids)))


def _logit(ids: Sequence[int]) -> float:
    return (sum(i * (k + 1) for k, i in enumerate(ids)) % 10_007) / 1000.0 - 5.0


@dataclass
class FakeScorer:
    max_tokens: int = 64
    padded: bool = True
    device: str = "cpu"
    gate: threading.Event = field(default_factory=threading.Event)
    batches: list[list[list[int]]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    poison: str | None = None  # a word whose pairs get a NaN logit
    fail_next: bool = False
    fault: tuple[str, str] | None = None  # (stage, how) for pairs holding FAULT_WORD
    _faulty_forward: bool = False  # the last forward's batch held FAULT_WORD (for activate)

    def __post_init__(self) -> None:
        self.gate.set()

    @property
    def info(self) -> ScorerInfo:
        return ScorerInfo(
            "fake", self.max_tokens, "identity", "float32", self.device, "none", self.padded
        )

    def tokenize(self, pairs: Sequence[tuple[str, str]], truncation: Truncation) -> TokenizedPairs:
        ids, truncated = [], []
        for query, text in pairs:
            q = [token_id(w) for w in query.split()]
            t = [token_id(w) for w in text.split()]
            room = self.max_tokens - 3
            cut = len(q) + len(t) > room
            while len(q) + len(t) > room:  # longest_first
                longer = q if len(q) > len(t) else t
                if truncation is Truncation.START:
                    del longer[0]
                else:
                    longer.pop()
            ids.append([1, *q, 2, *t, 2])
            truncated.append(cut)
        if self._faults("tokenize", ids):
            ids, truncated = self._misbehave(ids), self._misbehave(truncated)
        return TokenizedPairs(ids=ids, type_ids=None, truncated=truncated)

    def _faults(self, stage: str, rows: Sequence[Sequence[int]]) -> bool:
        """Whether ``stage`` misbehaves for these rows."""
        if self.fault is None or self.fault[0] != stage:
            return False
        return any(token_id(FAULT_WORD) in row for row in rows)

    def _misbehave(self, values: list[Any]) -> list[Any]:
        assert self.fault is not None
        if self.fault[1] == "raise":
            raise RuntimeError(f"simulated {self.fault[0]} failure")
        return values[:-1] if self.fault[1] == "short" else [*values, values[-1]]

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Words and their character spans (the fake's tokens)."""
        out = []
        for text in texts:
            spans, start = [], None
            for i, ch in enumerate(text + " "):
                if ch.isspace():
                    if start is not None:
                        spans.append((start, i))
                        start = None
                elif start is None:
                    start = i
            out.append(spans)
        return out

    def collate(self, ids: Sequence[list[int]], type_ids: Sequence[list[int]] | None) -> Any:
        self.events.append(f"collate {len(ids)}")
        batch = [list(row) for row in ids]
        return self._misbehave(batch) if self._faults("collate", batch) else batch

    def forward(self, batch: Any) -> FloatArray:
        self.events.append(f"forward {len(batch)}")
        self.gate.wait(timeout=30)
        self.batches.append(batch)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated model failure")
        poison = token_id(self.poison) if self.poison else None
        out = [float("nan") if poison in row else _logit(row) for row in batch]
        self._faulty_forward = any(token_id(FAULT_WORD) in row for row in batch)
        if self._faults("forward", batch):
            out = self._misbehave(out)
        return np.asarray(out, dtype=np.float32)

    def activate(self, logits: FloatArray) -> FloatArray:
        if self._faulty_forward and self.fault is not None and self.fault[0] == "activate":
            return np.asarray(self._misbehave(logits.tolist()), dtype=np.float32)
        return logits

    def warmup(self, max_batch_tokens: int, max_batch_size: int) -> float | None:
        self.forward([[1] * min(self.max_tokens, max_batch_tokens)])
        return None
