"""The warm-up measures a batch's fixed cost, which the scheduler's batching objective uses."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from rerankd_server.scoring import hf
from rerankd_server.scoring.hf import HFCrossEncoder, Placement


def test_warmup_measures_a_batch_fixed_cost(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer = HFCrossEncoder(str(tiny_models["modernbert"]), Placement("cpu", "float32", "sdpa"))
    now = [0.0]

    def device(batch: Any) -> Any:
        """A device that costs 20 ms per batch and 20 us per token, a fixed cost of 1,000
        tokens, in place of the model's forward, on a clock of its own: real time (the tiny
        model's compute, or a sleep) varies by milliseconds on a busy machine."""
        now[0] += 0.020 + 20e-6 * batch["input_ids"].numel()
        return np.zeros(len(batch["input_ids"]), dtype=np.float32)

    monkeypatch.setattr(hf, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    scorer.forward = device  # type: ignore[method-assign]
    fixed = scorer.warmup(4096, 64)
    assert fixed == pytest.approx(1000, rel=1e-6)
