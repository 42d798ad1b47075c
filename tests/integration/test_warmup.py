"""The warm-up measures a batch's fixed cost, which the scheduler's batching objective uses."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from rerankd_server.scoring.hf import HFCrossEncoder, Placement


def test_warmup_measures_a_batch_fixed_cost(tiny_models: dict[str, Path]) -> None:
    scorer = HFCrossEncoder(str(tiny_models["modernbert"]), Placement("cpu", "float32", "sdpa"))

    def device(batch: Any) -> Any:
        """A device that costs 20 ms per batch and 20 us per token, a fixed cost of 1,000
        tokens, in place of the model's forward: the tiny model's own compute right after a
        sleep varied 2.5-17 ms here (threads and caches gone cold), which blurred the figure."""
        time.sleep(0.020 + 20e-6 * batch["input_ids"].numel())
        return np.zeros(len(batch["input_ids"]), dtype=np.float32)

    scorer.forward = device  # type: ignore[method-assign]
    fixed = scorer.warmup(4096, 64)
    assert 900 < fixed < 1100, fixed
