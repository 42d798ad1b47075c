"""The correctness anchor: scores of Sentence Transformers' own ``CrossEncoder.predict``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder


def predict(
    path: Path,
    pairs: Sequence[tuple[str, str]],
    *,
    raw: bool,
    side: str = "right",
    batch_size: int = 4,
) -> np.ndarray:
    """``CrossEncoder(path).predict(pairs)`` on the CPU in float64 numbers: raw logits when
    ``raw``, else with the model's activation; truncating on ``side``."""
    model = CrossEncoder(str(path), device="cpu")
    model.tokenizer.truncation_side = side
    activation = torch.nn.Identity() if raw else None
    scores = model.predict(list(pairs), activation_fn=activation, batch_size=batch_size)
    return np.asarray(scores, dtype=np.float64)
