"""Bench-local scorers that implement rerankd's ``Scorer`` protocol.

* ``NoopScorer``: no tokenizer, no model; what is left is gRPC, the servicer and the scheduler
  (it says its tokenization is light, so the scheduler does not cross to a tokenizer thread).
* ``SimulatedGpu``: real tokenization and collation (packed, as on CUDA, for an unpadded
  device), but ``forward`` sleeps (holding the model thread, not the CPU) for the time a GPU
  would take: a fixed cost per batch plus a cost per computed token, calibrated to a published
  H100 rate. It shows whether the host keeps a fast device busy.
* ``Timed``: wraps any scorer and adds up the model thread's busy time, so a run can report
  the device's busy fraction (over the whole run, or over a window of it) and the time spent
  on work nobody waited for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from rerankd_server.scoring.base import FloatArray, Scorer, ScorerInfo, TokenizedPairs, Truncation

#: Mean pair length of natural-questions pairs truncated at 512 (assumed; used for calibration).
NQ_MEAN_TOKENS = 140
#: Fixed cost of one batch on the device (launches, transfers, the classifier head), assumed.
BATCH_FIXED_S = 0.0015
#: Pairs in the calibration batch: a 16,384-token budget of natural-questions pairs.
CALIBRATION_BATCH = 16384 // NQ_MEAN_TOKENS


@dataclass(frozen=True)
class DeviceModel:
    """Seconds a simulated device needs for a batch: ``fixed + per_token * computed``."""

    fixed_s: float
    per_token_s: float
    padded: bool

    @classmethod
    def calibrated(cls, pairs_per_s: float, padded: bool = False) -> DeviceModel:
        """A device that runs ``pairs_per_s`` natural-questions pairs per second."""
        batch_s = CALIBRATION_BATCH / pairs_per_s
        per_token = max(0.0, batch_s - BATCH_FIXED_S) / (CALIBRATION_BATCH * NQ_MEAN_TOKENS)
        return cls(BATCH_FIXED_S, per_token, padded)

    def seconds(self, lengths: Sequence[int]) -> float:
        computed = max(lengths) * len(lengths) if self.padded else sum(lengths)
        return self.fixed_s + self.per_token_s * computed


class Timed:
    """Delegates to ``inner`` and counts the model thread's busy seconds and batches."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.busy_s = 0.0
        self.batches = 0
        self._spans: list[tuple[float, float]] = []  # each forward pass, on perf_counter
        self._lock = threading.Lock()

    @property
    def info(self) -> ScorerInfo:
        return self.inner.info

    def tokenize(self, pairs: Sequence[tuple[str, str]], truncation: Truncation) -> TokenizedPairs:
        return self.inner.tokenize(pairs, truncation)

    def collate(self, ids: Sequence[list[int]], type_ids: Sequence[list[int]] | None) -> Any:
        return self.inner.collate(ids, type_ids)

    def forward(self, batch: Any) -> FloatArray:
        start = time.perf_counter()
        try:
            return self.inner.forward(batch)
        finally:
            end = time.perf_counter()
            with self._lock:
                self.busy_s += end - start
                self.batches += 1
                self._spans.append((start, end))

    def busy_between(self, start: float, end: float) -> float:
        """Seconds of forward passes inside ``start``..``end`` (``perf_counter``, which is the
        system's monotonic clock: another process's readings compare)."""
        with self._lock:
            spans = list(self._spans)
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)

    def activate(self, logits: FloatArray) -> FloatArray:
        return self.inner.activate(logits)

    def warmup(self, max_batch_tokens: int, max_batch_size: int) -> float | None:
        return self.inner.warmup(max_batch_tokens, max_batch_size)

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character spans of each text's tokens (used by the server's document chunking)."""
        return self.inner.token_spans(texts)


class NoopScorer:
    """One token per pair, zero logits: measures everything but the model."""

    def __init__(self) -> None:
        self._info = ScorerInfo(
            "noop", 512, "identity", "none", "cpu", "none", padded=False, light_tokenize=True
        )

    @property
    def info(self) -> ScorerInfo:
        return self._info

    def tokenize(self, pairs: Sequence[tuple[str, str]], truncation: Truncation) -> TokenizedPairs:
        count = len(pairs)
        return TokenizedPairs(ids=[[1]] * count, type_ids=None, truncated=[False] * count)

    def collate(self, ids: Sequence[list[int]], type_ids: Sequence[list[int]] | None) -> Any:
        return len(ids)

    def forward(self, batch: Any) -> FloatArray:
        return np.zeros(int(batch), dtype=np.float32)

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """One token per text, spanning all of it."""
        return [[(0, len(text))] for text in texts]

    def activate(self, logits: FloatArray) -> FloatArray:
        return logits

    def warmup(self, max_batch_tokens: int, max_batch_size: int) -> float | None:
        return None


class SimulatedGpu:
    """Real tokenizer and collation from ``tokenizer_scorer``; the forward pass is a timed sleep."""

    def __init__(self, tokenizer_scorer: Scorer, device: DeviceModel) -> None:
        from rerankd_server.scoring.packed import pack  # torch: not for the no-op scorer's server

        self._pack = pack
        self._real = tokenizer_scorer
        self._device = device
        self._info = replace(
            tokenizer_scorer.info,
            device="simulated-gpu",
            dtype="simulated",
            padded=device.padded,
        )

    @property
    def info(self) -> ScorerInfo:
        return self._info

    def tokenize(self, pairs: Sequence[tuple[str, str]], truncation: Truncation) -> TokenizedPairs:
        return self._real.tokenize(pairs, truncation)

    def collate(self, ids: Sequence[list[int]], type_ids: Sequence[list[int]] | None) -> Any:
        """The host's work for the device simulated: packed rows for an unpadded one, as a
        ModernBERT on CUDA runs (pinning aside: this host has no CUDA), else padded ones."""
        lengths = [len(row) for row in ids]
        if self._device.padded:
            return self._real.collate(ids, type_ids), lengths
        return self._pack(ids, pin=False), lengths

    def forward(self, batch: Any) -> FloatArray:
        _, lengths = batch
        deadline = time.perf_counter() + self._device.seconds(lengths)
        while (left := deadline - time.perf_counter()) > 0:
            time.sleep(left)
        return np.zeros(len(lengths), dtype=np.float32)

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character spans from the real tokenizer."""
        return self._real.token_spans(texts)

    def activate(self, logits: FloatArray) -> FloatArray:
        return self._real.activate(logits)

    def warmup(self, max_batch_tokens: int, max_batch_size: int) -> float | None:
        return None
