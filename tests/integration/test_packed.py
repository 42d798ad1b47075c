"""Packed (unpadded) execution: equal to the padded model, refused or dropped when it cannot be.

Both layouts pack: a headless ModernBERT whose token embeddings feed the Ettin module chain, and
a ModernBERT sequence classifier with its own head. On the CPU the packed forward runs its
attention per sequence with SDPA; on CUDA the same code calls a varlen Flash Attention (not
available here). Parity with ``CrossEncoder.predict`` through a server running packed is in
test_parity.py.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rerankd_server.scoring import hf
from rerankd_server.scoring.base import Truncation
from rerankd_server.scoring.hf import HFCrossEncoder, Placement
from rerankd_server.scoring.packed import PackedBatch, pack
from rerankd_server.tiny_models import build_tiny_model

PAIRS = [("query", "word " * n) for n in (0, 1, 5, 14, 15, 16, 17, 40, 90, 300)]


def scorer(path: Path, attention: str) -> HFCrossEncoder:
    return HFCrossEncoder(str(path), Placement("cpu", "float32", attention))


def _packed_equals_padded(packed: HFCrossEncoder, padded: HFCrossEncoder) -> None:
    tokens = packed.tokenize(PAIRS, Truncation.DEFAULT)
    # Lengths around the tiny model's 16-token local window and up to its max length.
    assert len({len(ids) for ids in tokens.ids}) == len(PAIRS)
    batch = packed.collate(tokens.ids, None)
    assert isinstance(batch, PackedBatch)
    assert batch.input_ids.numel() == sum(len(ids) for ids in tokens.ids)  # no padding
    expected = padded.forward(padded.collate(tokens.ids, None))
    np.testing.assert_allclose(packed.forward(batch), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_packed_classifier_logits_equal_padded_ones(
    tiny_models: dict[str, Path], pooling: str
) -> None:
    packed, padded = (scorer(tiny_models["modernbert_classifier"], a) for a in ("packed", "sdpa"))
    assert not packed.info.padded and packed.info.attention_implementation == "packed (sdpa)"
    assert padded.info.padded
    for model in (packed._model, padded._model):
        model.config.classifier_pooling = pooling
    _packed_equals_padded(packed, padded)


@pytest.mark.parametrize("pooling", ["cls", "mean", "max", "lasttoken", "weightedmean"])
def test_packed_module_chain_equals_padded(tmp_path: Path, pooling: str) -> None:
    """The Ettin chain (headless ModernBERT > Pooling > Dense > LayerNorm > Dense) packed:
    Pooling reads the packed rows, every mode as the padded model gives it."""
    path = build_tiny_model(tmp_path / pooling, layout="ettin", pooling=pooling)  # type: ignore[arg-type]
    packed, padded = scorer(path, "packed"), scorer(path, "sdpa")
    assert not packed.info.padded and packed.info.attention_implementation == "packed (sdpa)"
    assert packed.info.modules.startswith(f"Transformer(ModernBertModel) > Pooling({pooling})")
    _packed_equals_padded(packed, padded)


def test_a_model_packing_does_not_support_runs_padded(
    tiny_models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        bert = scorer(tiny_models["bert"], "packed")
    assert bert.info.padded and bert.info.attention_implementation == "sdpa"
    assert "packed execution unavailable" in caplog.text and "ModernBERT" in caplog.text


def test_packed_logits_that_disagree_at_load_fall_back_to_padded(
    tiny_models: dict[str, Path], caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    def wrong_attention(q: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(q)  # as a layout change in transformers might compute

    monkeypatch.setattr(hf, "reference_attention", wrong_attention)
    with caplog.at_level(logging.WARNING):
        fallen = scorer(tiny_models["modernbert"], "packed")
    assert fallen.info.padded
    assert "differ from padded" in caplog.text


def test_out_of_memory_splits_a_packed_batch(tiny_models: dict[str, Path]) -> None:
    packed = scorer(tiny_models["modernbert"], "packed")
    tokens = packed.tokenize(PAIRS, Truncation.DEFAULT)
    batch = packed.collate(tokens.ids, None)
    expected = packed.forward(batch)
    runner = packed._packed
    assert runner is not None
    ran: list[int] = []

    class SmallDevice:
        def hidden(self, part: PackedBatch) -> torch.Tensor:
            if len(part) > 3:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            ran.append(len(part))
            return runner.hidden(part)

    packed._packed = SmallDevice()  # type: ignore[assignment]
    np.testing.assert_allclose(packed.forward(batch), expected, atol=1e-6, rtol=0)
    assert sum(ran) == len(PAIRS) and max(ran) <= 3


def test_auto_attention_on_the_cpu_stays_padded() -> None:
    assert hf.resolve_placement("cpu", "auto", "auto") == Placement("cpu", "float32", "sdpa")


def test_auto_attention_on_cuda_packs_half_precision_only(monkeypatch: Any) -> None:
    """varlen_attn (and flash-attn) take fp16/bf16 only: float32 on CUDA runs SDPA."""
    monkeypatch.setattr(hf.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hf, "varlen_attention", lambda: hf.reference_attention)
    monkeypatch.setattr(hf.importlib.util, "find_spec", lambda name: None)
    assert hf.resolve_placement("cuda", "auto", "auto") == Placement("cuda", "bfloat16", "packed")
    assert hf.resolve_placement("cuda", "float32", "auto") == Placement("cuda", "float32", "sdpa")


def test_a_packed_batch_lays_its_rows_end_to_end() -> None:
    rng = np.random.default_rng(7)
    for count in (1, 2, 37):
        rows = [rng.integers(0, 50_000, rng.integers(1, 60)).tolist() for _ in range(count)]
        batch = pack(rows, pin=False)
        assert batch.input_ids.tolist() == [token for row in rows for token in row]
        assert batch.positions.tolist() == [p for row in rows for p in range(len(row))]
        assert batch.cu_seqlens.tolist() == [0, *itertools.accumulate(map(len, rows))]
        assert batch.lengths == tuple(map(len, rows))
        assert all(type(n) is int for n in batch.lengths)
        assert (batch.input_ids.dtype, batch.positions.dtype, batch.cu_seqlens.dtype) == (
            torch.int64,
            torch.int64,
            torch.int32,
        )


@pytest.mark.parametrize("name", ["modernbert", "bert", "causal"])
def test_a_padded_batch_holds_each_row_in_its_span(tiny_models: dict[str, Path], name: str) -> None:
    """Right-padded, with type ids (BERT), and left-padded (the causal reranker)."""
    model = scorer(tiny_models[name], "sdpa")
    tokens = model.tokenize(PAIRS, Truncation.DEFAULT)
    batch = model.collate_padded(tokens.ids, tokens.type_ids)
    longest = max(map(len, tokens.ids))
    pad, left = model._pad_id, model._pad_left
    assert left == (name == "causal")
    assert ("token_type_ids" in batch) == (tokens.type_ids is not None) == (name == "bert")
    for row, ids in enumerate(tokens.ids):
        gap = longest - len(ids)
        span = slice(gap, longest) if left else slice(0, len(ids))
        rest = slice(0, gap) if left else slice(len(ids), longest)
        assert batch["input_ids"][row, span].tolist() == ids
        assert set(batch["input_ids"][row, rest].tolist()) <= {pad}
        assert batch["attention_mask"][row, span].tolist() == [1] * len(ids)
        assert set(batch["attention_mask"][row, rest].tolist()) <= {0}
        if tokens.type_ids is not None:
            assert batch["token_type_ids"][row, span].tolist() == tokens.type_ids[row]
            assert set(batch["token_type_ids"][row, rest].tolist()) <= {0}
