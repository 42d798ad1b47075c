"""The warm-up measures a batch's fixed cost, which the scheduler's batching objective uses."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rerankd_server.scoring.hf import HFCrossEncoder, Placement


def test_warmup_measures_a_batch_fixed_cost(tiny_models: dict[str, Path]) -> None:
    scorer = HFCrossEncoder(str(tiny_models["modernbert"]), Placement("cpu", "float32", "sdpa"))
    forward = scorer.forward

    def slow_forward(batch: Any) -> Any:
        """The tiny model plus a device that costs 20 ms per batch and 20 us per token: a
        fixed cost of 1,000 tokens (the tiny model's own ~1 ms per batch and ~1.3 us per
        token move it by a few percent)."""
        time.sleep(0.020 + 20e-6 * batch["input_ids"].numel())
        return forward(batch)

    scorer.forward = slow_forward  # type: ignore[method-assign]
    fixed = scorer.warmup(4096, 64)
    assert fixed is not None and 800 < fixed < 1250, fixed
