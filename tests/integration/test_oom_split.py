"""Out of device memory, a batch is split and retried instead of failing its callers.

No GPU here: the model is wrapped so that it raises torch.OutOfMemoryError, as CUDA does, for
batches larger than it can take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rerankd_server.scoring.base import Truncation
from rerankd_server.scoring.hf import HFCrossEncoder, resolve_placement


class SmallDevice:
    """A model that runs out of memory above ``capacity`` pairs per batch."""

    def __init__(self, model: Any, capacity: int) -> None:
        self.model, self.capacity = model, capacity
        self.ran: list[int] = []  # sizes of the batches that fitted

    def __call__(self, **inputs: torch.Tensor) -> Any:
        size = int(inputs["input_ids"].shape[0])
        if size > self.capacity:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.ran.append(size)
        return self.model(**inputs)


def test_out_of_memory_splits_the_batch_and_gives_the_same_scores(
    tiny_models: dict[str, Path],
) -> None:
    scorer = HFCrossEncoder(str(tiny_models["bert"]), resolve_placement("cpu", "float32", "sdpa"))
    pairs = [("query", "word " * n) for n in range(1, 12)]
    tokens = scorer.tokenize(pairs, Truncation.DEFAULT)
    batch = scorer.collate(tokens.ids, tokens.type_ids)
    expected = scorer.forward(batch)
    device = SmallDevice(scorer._model, capacity=3)
    scorer._model = device
    np.testing.assert_allclose(scorer.forward(batch), expected, atol=1e-6, rtol=0)
    assert sum(device.ran) == 11 and max(device.ran) <= 3
    device.capacity = 0  # not even one pair fits: the error reaches the caller
    with pytest.raises(torch.OutOfMemoryError):
        scorer.forward(batch)
