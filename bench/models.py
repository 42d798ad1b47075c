"""Benchmark models: the tiny test model, random Ettin-shaped ModernBERTs, the man-page model.

Random weights are enough for speed: compute depends on shapes, not values. The Ettin shapes
below are stated from the published ModernBERT/Ettin configurations as recalled (not fetched):
hidden/layers/heads/intermediate of 256/7/4/384 (17M), 768/22/12/1152 (150M, = ModernBERT-base)
and 1792/28/28/3840 (1B). The vocabulary is the real 50,368 so parameter counts and memory
match, but the tokenizer is the tiny model's word-level one (ids stay below 1,500), which
makes token counts of the synthetic texts predictable (about one token per word).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHARED_MODEL = Path("/work/shared/models/manpages-minilm-l6-ce")
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
MODEL_NAMES = ("tiny", *ETTIN, "manpages")
ETTIN_VOCAB = 50368


def model_path(name: str, max_seq_length: int = 8000) -> Path:
    """A local folder holding model ``name`` in the CrossEncoder layout (built once, cached).

    Raises:
        FileNotFoundError: ``manpages`` requested but ``/work/shared`` does not hold it.
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
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def _tiny(path: Path, max_seq_length: int) -> Path:
    from rerankd_server.tiny_models import build_tiny_model

    if not (path / "model.safetensors").exists():
        build_tiny_model(path, "modernbert", max_seq_length=max_seq_length)
    return path


def ettin_config(name: str, max_positions: int) -> dict[str, Any]:
    """ModernBERT config fields of Ettin ``name``'s shape, as a one-score cross-encoder."""
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
        num_labels=1,
    )


def build_ettin(name: str, path: Path, max_seq_length: int = 8000, dtype: str = "float32") -> Path:
    """Write a random ModernBERT cross-encoder with Ettin ``name``'s shape to ``path``."""
    if (path / "model.safetensors").exists():
        return path
    import torch
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    tiny = _tiny(CACHE / "tiny", 512)
    path.mkdir(parents=True, exist_ok=True)
    for item in tiny.iterdir():  # tokenizer and Sentence Transformers layout
        if item.name not in ("model.safetensors", "config.json"):
            shutil.copy(item, path / item.name)
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    tok_config["model_max_length"] = max_seq_length
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    st = json.loads((path / "sentence_bert_config.json").read_text())
    st["max_seq_length"] = max_seq_length
    (path / "sentence_bert_config.json").write_text(json.dumps(st, indent=4))
    ids = json.loads((tiny / "config.json").read_text())
    config = ModernBertConfig(
        **ettin_config(name, max_seq_length),
        pad_token_id=ids["pad_token_id"],
        cls_token_id=ids.get("cls_token_id", 2),
        sep_token_id=ids.get("sep_token_id", 3),
        bos_token_id=ids.get("cls_token_id", 2),
        eos_token_id=ids.get("sep_token_id", 3),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model: Any = ModernBertForSequenceClassification(config)
    model.to(getattr(torch, dtype)).save_pretrained(path, safe_serialization=True)
    return path
