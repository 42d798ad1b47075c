"""Unpadded (packed) execution of ModernBERT cross-encoders without the ``flash-attn`` package.

A padded batch computes ``longest x count`` tokens; a packed one runs the linear layers over the
concatenated real tokens of all pairs and only the attention per sequence, so it computes the
sum of the lengths. Hugging Face's ModernBERT unpads by itself only with the ``flash-attn``
package, which often does not build; recent PyTorch (2.11 on the H200 it ran on, 2.13 here)
ships variable-length Flash Attention of its own (``torch.nn.attention.varlen.varlen_attn``,
CUDA only), which this module uses. On the CPU the same code runs with a per-sequence SDPA
attention (correct but slower than padding there, see docs/benchmarks.md), which is how the
tests check it without a GPU.

The forward reuses the model's own modules (embeddings, projections, rotary tables, MLPs, head)
and replaces only the batching and the attention call. It depends on the layout of
transformers' ModernBERT, so ``PackedModernBert`` refuses a model whose layout differs and the
scorer checks the packed logits against the padded model once at load, falling back to padded
execution on any difference.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
    """Concatenate token id rows into a ``PackedBatch`` (pinned for a fast copy to CUDA)."""
    lengths = tuple(len(row) for row in ids)
    input_ids = torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.int64)
    positions = torch.cat([torch.arange(n, dtype=torch.int64) for n in lengths])
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    batch = PackedBatch(input_ids, positions, cu_seqlens, lengths)
    if pin:
        batch = PackedBatch(
            input_ids.pin_memory(), positions.pin_memory(), cu_seqlens.pin_memory(), lengths
        )
    return batch


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


class PackedModernBert:
    """Runs a transformers ``ModernBertForSequenceClassification`` on ``PackedBatch`` inputs."""

    def __init__(self, model: Any, attention: AttentionFn) -> None:
        """Raises:
        PackingUnsupported: the model is not a ModernBERT laid out as this code expects.
        """
        config = model.config
        if getattr(config, "model_type", None) != "modernbert":
            raise PackingUnsupported(
                f"packed execution supports ModernBERT models, not {config.model_type}"
            )
        base = getattr(model, "model", None)
        needed = ("embeddings", "rotary_emb", "layers", "final_norm")
        layer_parts = ("attn", "attn_norm", "mlp", "mlp_norm", "attention_type")
        attn_parts = ("Wqkv", "Wo", "head_dim", "sliding_window")
        if (
            base is None
            or not all(hasattr(base, name) for name in needed)
            or not all(hasattr(layer, name) for layer in base.layers for name in layer_parts)
            or not all(hasattr(layer.attn, name) for layer in base.layers for name in attn_parts)
            or not all(hasattr(model, name) for name in ("head", "drop", "classifier"))
            or not hasattr(config, "layer_types")
        ):
            raise PackingUnsupported("this transformers version lays ModernBERT out differently")
        from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

        self._model = model
        self._attention = attention
        self._rotate = apply_rotary_pos_emb

    @torch.inference_mode()
    def logits(self, batch: PackedBatch) -> torch.Tensor:
        """The first logit of each pair, shape (pairs,), in the model's dtype."""
        model = self._model
        config = model.config
        base = model.model
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
        hidden = base.final_norm(hidden)
        if config.classifier_pooling == "mean":
            device = hidden.device
            lengths = torch.tensor(batch.lengths, device=device)
            segment = torch.repeat_interleave(torch.arange(len(batch), device=device), lengths)
            pooled = hidden.new_zeros(len(batch), hidden.shape[1])
            pooled.index_add_(0, segment, hidden)
            pooled = pooled / lengths[:, None].to(hidden.dtype)
        else:
            pooled = hidden[cu[:-1].long()]
        out_logits: torch.Tensor = model.classifier(model.drop(model.head(pooled)))
        return out_logits[:, 0]
