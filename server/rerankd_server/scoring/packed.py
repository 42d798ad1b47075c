"""Unpadded (packed) execution of ModernBERT cross-encoders.

A padded batch computes ``longest x count`` tokens; a packed one runs the linear layers over the
concatenated real tokens of all pairs and only the attention per sequence, so it computes the
sum of the lengths. Transformers' ModernBERT runs padded batches (its Flash Attention 2 path
unpads inside each attention call only); this module runs the whole encoder on the packed
tokens with a variable-length attention kernel: the ``flash-attn`` package's where it is
installed, else PyTorch's own (``torch.nn.attention.varlen.varlen_attn``, CUDA only, PyTorch
2.11 and later). On the CPU the same code runs with a per-sequence SDPA attention (correct but
slower than padding there, see docs/benchmarks.md), which is how the tests check it without a
GPU.

The forward reuses the model's own modules (embeddings, projections, rotary tables, MLPs) and
replaces only the batching and the attention call; its last hidden state feeds the same head
modules as a padded batch (``scoring.modules``). It depends on the layout of transformers'
ModernBERT, so ``modernbert_encoder`` refuses a model whose layout differs and the scorer checks
the packed scores against the padded model once at load, falling back to padded execution on
any difference.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

AttentionFn = Callable[..., Any]  # returns a Tensor (varlen_attn: unless asked for more)


class PackingUnsupported(Exception):
    """The model or the installed PyTorch cannot run packed; the reason is the message."""


@dataclass(frozen=True)
class PackedBatch:
    """The pairs of one batch as a single token stream."""

    input_ids: torch.Tensor  # (total tokens,) int64
    positions: torch.Tensor  # (total tokens,) position of each token in its own pair
    cu_seqlens: torch.Tensor  # (pairs + 1,) int32: where each pair starts, then the total
    lengths: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.lengths)

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device, non_blocking=True),
            self.positions.to(device, non_blocking=True),
            self.cu_seqlens.to(device, non_blocking=True),
            self.lengths,
        )

    def halves(self) -> tuple[PackedBatch, PackedBatch]:
        """The first and the second half of the pairs (to retry after running out of memory)."""
        half = len(self.lengths) // 2
        cut = int(sum(self.lengths[:half]))
        first = PackedBatch(
            self.input_ids[:cut],
            self.positions[:cut],
            self.cu_seqlens[: half + 1],
            self.lengths[:half],
        )
        second = PackedBatch(
            self.input_ids[cut:],
            self.positions[cut:],
            self.cu_seqlens[half:] - cut,
            self.lengths[half:],
        )
        return first, second


def pack(ids: Sequence[Sequence[int]], pin: bool) -> PackedBatch:
    """Concatenate token id rows into a ``PackedBatch`` (pinned for a fast copy to CUDA).

    A few whole-array numpy operations per batch: a tensor from a Python list and a
    ``torch.arange`` per row cost 4-10x as much, with the GIL held (docs/design.md)."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    ends = lengths.cumsum()
    total = int(ends[-1])
    positions = np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)
    cu_seqlens = np.zeros(len(ids) + 1, dtype=np.int32)
    cu_seqlens[1:] = ends
    tensors = [torch.from_numpy(a) for a in (flat(ids, total), positions, cu_seqlens)]
    if pin:
        tensors = [tensor.pin_memory() for tensor in tensors]
    input_ids, position_ids, cu = tensors
    return PackedBatch(input_ids, position_ids, cu, tuple(lengths.tolist()))


def flat(rows: Sequence[Sequence[int]], total: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """The rows' ``total`` values end to end, as int64."""
    return np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)


def varlen_attention() -> AttentionFn | None:
    """PyTorch's variable-length Flash Attention, or None where this PyTorch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    fn: AttentionFn = varlen_attn
    return fn


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    *,
    scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
) -> torch.Tensor:
    """``varlen_attn``'s semantics with one SDPA call per sequence (any device)."""
    out = torch.empty_like(q)
    for start, end in itertools.pairwise(cu_q.tolist()):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        mask = None
        if window_size != (-1, -1):
            pos = torch.arange(end - start, device=q.device)
            diff = pos[None, :] - pos[:, None]
            mask = (diff >= -window_size[0]) & (diff <= window_size[1])
        att = torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=mask, scale=scale
        )
        out[start:end] = att.transpose(0, 1)
    return out


def modernbert_encoder(model: Any) -> Any:
    """The ``ModernBertModel`` of a headless model or of a sequence classifier.

    Raises:
        PackingUnsupported: the model is not a ModernBERT laid out as this code expects.
    """
    config = model.config
    if getattr(config, "model_type", None) != "modernbert":
        raise PackingUnsupported(
            f"packed execution supports ModernBERT models, not {config.model_type}"
        )
    base = getattr(model, "model", model)
    needed = ("embeddings", "rotary_emb", "layers", "final_norm")
    layer_parts = ("attn", "attn_norm", "mlp", "mlp_norm", "attention_type")
    attn_parts = ("Wqkv", "Wo", "head_dim", "sliding_window")
    if (
        not all(hasattr(base, name) for name in needed)
        or not all(hasattr(layer, name) for layer in base.layers for name in layer_parts)
        or not all(hasattr(layer.attn, name) for layer in base.layers for name in attn_parts)
        or not hasattr(config, "layer_types")
    ):
        raise PackingUnsupported("this transformers version lays ModernBERT out differently")
    return base


class PackedModernBert:
    """Runs a transformers ``ModernBertModel`` on ``PackedBatch`` inputs."""

    def __init__(self, encoder: Any, attention: AttentionFn) -> None:
        """``encoder``: as ``modernbert_encoder`` returns it."""
        from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

        self._model = encoder
        self._attention = attention
        self._rotate = apply_rotary_pos_emb

    @torch.inference_mode()
    def hidden(self, batch: PackedBatch) -> torch.Tensor:
        """The last hidden state of every token, shape (total tokens, hidden), in the model's
        dtype: what the padded model returns for the real tokens."""
        base = self._model
        config = base.config
        cu = batch.cu_seqlens
        longest = max(batch.lengths)
        hidden = base.embeddings(input_ids=batch.input_ids)
        total = hidden.shape[0]
        rope = {
            kind: tuple(
                t[0] for t in base.rotary_emb(hidden[None], batch.positions[None], layer_type=kind)
            )
            for kind in set(config.layer_types)
        }
        half_window = config.local_attention // 2
        for layer in base.layers:
            block = layer.attn
            qkv = block.Wqkv(layer.attn_norm(hidden)).view(total, 3, -1, block.head_dim)
            q, k, v = qkv.unbind(1)
            cos, sin = rope[layer.attention_type]
            q, k = self._rotate(q, k, cos, sin, unsqueeze_dim=1)
            window = (-1, -1) if block.sliding_window is None else (half_window, half_window)
            out: torch.Tensor = self._attention(
                q,
                k,
                v.contiguous(),
                cu,
                cu,
                longest,
                longest,
                scale=block.head_dim**-0.5,
                window_size=window,
            )
            hidden = hidden + block.Wo(out.reshape(total, -1))
            hidden = hidden + layer.mlp(layer.mlp_norm(hidden))
        result: torch.Tensor = base.final_norm(hidden)
        return result


class ClassifierHead(torch.nn.Module):
    """``ModernBertForSequenceClassification``'s own pooling and head on packed token
    embeddings, as a chain module writing ``scores``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        from rerankd_server.scoring.modules import Pooling

        self.config = model.config
        self.pooling = Pooling(self.config.hidden_size, ("cls",), include_prompt=True)
        self.head, self.drop, self.classifier = model.head, model.drop, model.classifier

    def describe(self) -> str:
        return "ClassifierHead"

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        # Read per call, as the transformers model does.
        self.pooling.modes = ("mean",) if self.config.classifier_pooling == "mean" else ("cls",)
        pooled = self.pooling(features)["sentence_embedding"]
        weight = self.classifier.weight
        features["scores"] = self.classifier(self.drop(self.head(pooled.to(weight.dtype))))
        return features


def flash_attn_varlen() -> AttentionFn | None:
    """The ``flash-attn`` package's variable-length kernel behind ``varlen_attn``'s
    signature, or None where the package is not installed."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None

    def attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_q: torch.Tensor,
        cu_k: torch.Tensor,
        max_q: int,
        max_k: int,
        *,
        scale: float | None = None,
        window_size: tuple[int, int] = (-1, -1),
    ) -> torch.Tensor:
        out: torch.Tensor = flash_attn_varlen_func(
            q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, window_size=window_size
        )
        return out

    return attention
