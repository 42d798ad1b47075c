"""Benchmark models: the tiny test model, random Ettin-shaped rerankers, the man-page model.

Random weights are enough for speed: compute depends on shapes, not values. The Ettin models are
saved in the layout the Ettin rerankers ship in (a headless ModernBERT, then Pooling(cls),
Dense(GELU), LayerNorm, Dense; ``tiny_models.save_cross_encoder``), with the shapes of the
published ModernBERT/Ettin configurations (stated as recalled, not fetched): hidden/layers/
heads/intermediate of 256/7/4/384 (17M), 768/22/12/1152 (150M, = ModernBERT-base) and
1792/28/28/3840 (1B). The vocabulary is the real 50,368 so parameter counts and memory match,
but the tokenizer is the tiny model's word-level one (ids stay below 1,500), which makes token
counts of the synthetic texts predictable (about one token per word).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The shared folder beside the checkout (``../shared``): reference data and a trained model.
SHARED = Path(__file__).resolve().parents[2] / "shared"
#: The trained man-page cross-encoder in the shared folder, when present.
SHARED_MODEL = SHARED / "models" / "manpages-minilm-l6-ce"
CACHE = Path.home() / ".cache" / "rerankd-bench"


@dataclass(frozen=True)
class EttinShape:
    """The shape of one Ettin encoder size (assumed; see the module docstring)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    #: Published H100 throughput (pairs/s, bf16 FA2 unpadded, natural-questions lengths),
    #: which the simulated GPU is calibrated to.
    h100_pairs_per_s: float


ETTIN: dict[str, EttinShape] = {
    "ettin-17m": EttinShape(256, 7, 4, 384, 7500.0),
    "ettin-150m": EttinShape(768, 22, 12, 1152, 3240.0),
    "ettin-1b": EttinShape(1792, 28, 28, 3840, 930.0),
}
#: An LLM reranker of Qwen3-Reranker-0.6B's shape (hidden/layers/heads/KV heads/head dim/
#: intermediate of 1024/28/16/8/128/3072, vocabulary 151,669, tied embeddings; as recalled),
#: saved as Sentence Transformers saves one: a chat template, then LogitScore("yes" - "no").
QWEN3_RERANKER = "qwen3-reranker-0.6b"
MODEL_NAMES = ("tiny", *ETTIN, QWEN3_RERANKER, "manpages")
ETTIN_VOCAB = 50368


def model_path(name: str, max_seq_length: int = 8000) -> Path:
    """A local folder holding model ``name`` in the CrossEncoder layout (built once, cached).

    Raises:
        FileNotFoundError: ``manpages`` requested but the shared folder does not hold it.
        ValueError: an unknown name.
    """
    if name == "manpages":
        if not SHARED_MODEL.is_dir():
            raise FileNotFoundError(f"{SHARED_MODEL} is absent; the manpages model is skipped")
        return SHARED_MODEL
    if name == "tiny":
        return _tiny(CACHE / "tiny", 512)
    if name in ETTIN:
        return build_ettin(name, CACHE / f"{name}-{max_seq_length}", max_seq_length)
    if name == QWEN3_RERANKER:
        return build_qwen3_reranker(CACHE / f"{name}-{max_seq_length}", max_seq_length)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def _tiny(path: Path, max_seq_length: int) -> Path:
    from rerankd_server.tiny_models import build_tiny_model

    if not (path / "1_Pooling" / "config.json").exists():  # built, in the Ettin layout
        build_tiny_model(path, "modernbert", max_seq_length=max_seq_length)
    return path


def ettin_config(name: str, max_positions: int) -> dict[str, Any]:
    """ModernBERT config fields of Ettin ``name``'s shape."""
    shape = ETTIN[name]
    return dict(
        vocab_size=ETTIN_VOCAB,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=max_positions,
        global_attn_every_n_layers=3,
        local_attention=128,
    )


def build_ettin(name: str, path: Path, max_seq_length: int = 8000, dtype: str = "float32") -> Path:
    """Write a random reranker with Ettin ``name``'s shape and layout to ``path`` (once)."""
    if (path / "1_Pooling" / "config.json").exists():  # built, in the Ettin layout
        return path
    from transformers import ModernBertConfig, ModernBertModel

    from rerankd_server.tiny_models import build_tokenizer

    tokenizer = build_tokenizer("modernbert")
    tokenizer.model_max_length = max_seq_length
    config = ModernBertConfig(
        **ettin_config(name, max_seq_length),
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    readme = f"Random {name}-shaped reranker in the Ettin layout, for benchmarks only.\n"
    return _save_random(path, ModernBertModel, config, dtype, tokenizer, "ettin", readme)


def build_qwen3_reranker(path: Path, max_seq_length: int = 8000, dtype: str = "float32") -> Path:
    """Write a random LLM reranker of Qwen3-Reranker-0.6B's shape to ``path`` (once), with the
    tiny model's chat template and byte-level tokenizer (ids below 1,200)."""
    if (path / "1_LogitScore" / "config.json").exists():
        return path
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from rerankd_server.tiny_models import build_causal_tokenizer

    tokenizer = build_causal_tokenizer()
    tokenizer.model_max_length = max_seq_length
    config = Qwen3Config(
        vocab_size=151_669,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=max(max_seq_length, 40_960),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    readme = "Random Qwen3-Reranker-0.6B-shaped LLM reranker, for benchmarks only.\n"
    return _save_random(path, Qwen3ForCausalLM, config, dtype, tokenizer, "causal-lm", readme)


def _save_random(
    path: Path, model_class: Any, config: Any, dtype: str, tokenizer: Any, layout: Any, readme: str
) -> Path:
    """Build ``model_class(config)`` with seeded random weights (the caller's RNG untouched)
    and save it as a CrossEncoder of ``layout`` (``tiny_models.save_cross_encoder``)."""
    import torch

    from rerankd_server.tiny_models import save_cross_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_class(config).to(getattr(torch, dtype))
        return save_cross_encoder(path, model, tokenizer, layout=layout, readme=readme)
