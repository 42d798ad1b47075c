"""The scorer protocol: what the scheduler needs from a model, and nothing about torch.

Work is split by thread: ``tokenize`` runs on a tokenizer pool, ``collate`` on the
batch-preparation thread, ``forward`` on the single model thread. Keeping the three apart
lets the scheduler prepare the next batch while the model computes the current one.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


class Truncation(enum.Enum):
    """How an over-long pair is handled (mirrors rerankd.v1.Truncation)."""

    DEFAULT = "default"  # the tokenizer's configured side, as CrossEncoder does
    END = "end"
    START = "start"
    NONE = "none"  # refuse over-long pairs


@dataclass(frozen=True)
class TokenizedPairs:
    """Token ids of a request's pairs, as the model will see them (special tokens included).

    ``type_ids`` is None for models without token_type_ids (ModernBERT).
    ``truncated[i]`` says whether pair i lost tokens to fit ``max_input_tokens``.
    """

    ids: list[list[int]]
    type_ids: list[list[int]] | None
    truncated: list[bool]

    def lengths(self) -> list[int]:
        """Length in tokens of every pair."""
        return [len(ids) for ids in self.ids]


@dataclass(frozen=True)
class ScorerInfo:
    """What the server reports about a model (GetModelInfo) and batches by."""

    name: str
    max_input_tokens: int
    activation: str
    dtype: str
    device: str
    attention_implementation: str
    padded: bool
    pair_special_tokens: int = 3  # tokens a pair adds to its texts: [CLS] [SEP] [SEP], a prompt
    modules: str = ""  # the module chain, e.g. "Transformer(ModernBertModel) > Pooling(cls) > ..."
    #: ``tokenize`` does no real work (ids given, a benchmark's no-op scorer): the scheduler
    #: calls it on the event loop rather than paying a thread hop to find that out.
    light_tokenize: bool = False


class Scorer(Protocol):
    """A cross-encoder as the scheduler drives it."""

    @property
    def info(self) -> ScorerInfo: ...

    def tokenize(self, pairs: Sequence[tuple[str, str]], truncation: Truncation) -> TokenizedPairs:
        """Tokenize (query, text) pairs; thread-safe, called off the event loop."""
        ...

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character spans of each text's tokens, without special tokens (for chunking)."""
        ...

    def collate(self, ids: Sequence[list[int]], type_ids: Sequence[list[int]] | None) -> Any:
        """Build the model input of one batch (called on the preparation thread)."""
        ...

    def forward(self, batch: Any) -> FloatArray:
        """Raw float32 logits, one per pair of ``batch`` (called on the model thread only)."""
        ...

    def activate(self, logits: FloatArray) -> FloatArray:
        """Apply the model's configured activation to raw logits."""
        ...

    def warmup(self, max_batch_tokens: int, max_batch_size: int) -> float | None:
        """Run one batch at the full budget so the first real call is not slow; return a
        batch's fixed cost in tokens if measured on the way (``batching.fixed_batch_cost``),
        else None (the scheduler then assumes the device's default)."""
        ...
