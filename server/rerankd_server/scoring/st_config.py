"""Read a cross-encoder's Sentence Transformers configuration the way CrossEncoder does.

This decides the activation and the maximum input length, so that rerankd's scores equal
``sentence_transformers.CrossEncoder(model).predict`` for the same model. The precedence
mirrors Sentence Transformers 3.x-6.x:

* activation: ``activation_fn`` in ``config_sentence_transformers.json``; else the
  ``sentence_transformers.activation_fn`` block of ``config.json``; else the older
  ``sbert_ce_default_activation_function``; else Sigmoid for one label, Identity otherwise.
  Only ``torch.*`` paths are trusted (remote code stays off); others fall back to the default.
* max length: ``max_seq_length`` in ``sentence_bert_config.json``; else the tokenizer's
  ``model_max_length`` capped at the model's ``max_position_embeddings``.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_TOO_LARGE = int(1e20)  # transformers' VERY_LARGE_INTEGER marks "no limit"


@dataclass(frozen=True)
class CrossEncoderConfig:
    """The parts of a Sentence Transformers config that change scores."""

    activation: str
    max_seq_length: int | None
    do_lower_case: bool


def read_json(source: str, filename: str) -> dict[str, Any] | None:
    """A JSON file of a hub repo or local folder, or None when it does not exist.

    Uses transformers' resolver, so the hub cache and ``HF_HUB_OFFLINE`` are honoured.
    """
    from transformers.utils.hub import cached_file

    path = cached_file(
        source,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    return data if isinstance(data, dict) else None


def resolve_config(source: str, model_config: Any) -> CrossEncoderConfig:
    """Activation path and length settings for the model at ``source``."""
    num_labels = int(getattr(model_config, "num_labels", 1))
    default = "torch.nn.Sigmoid" if num_labels == 1 else "torch.nn.Identity"
    st = read_json(source, "config_sentence_transformers.json") or {}
    path = st.get("activation_fn")
    if path is None:
        block = getattr(model_config, "sentence_transformers", None)
        if isinstance(block, dict):
            path = block.get("activation_fn")
    if path is None:
        path = getattr(model_config, "sbert_ce_default_activation_function", None)
    if path is not None and not str(path).startswith("torch."):
        log.warning(
            "activation %r is not a torch.* path; using %s as CrossEncoder does", path, default
        )
        path = None
    sbert = read_json(source, "sentence_bert_config.json") or {}
    max_seq = sbert.get("max_seq_length")
    return CrossEncoderConfig(
        activation=str(path) if path is not None else default,
        max_seq_length=int(max_seq) if max_seq else None,
        do_lower_case=bool(sbert.get("do_lower_case", False)),
    )


def max_input_tokens(
    config: CrossEncoderConfig, tokenizer_max: int | None, max_positions: int | None
) -> int | None:
    """The longest pair the model reads, or None when nothing bounds it."""
    if config.max_seq_length is not None:
        return config.max_seq_length
    limit = tokenizer_max if tokenizer_max is not None and tokenizer_max < _TOO_LARGE else None
    if max_positions is not None and max_positions > 0:
        limit = max_positions if limit is None else min(limit, max_positions)
    return limit


def load_activation(path: str) -> Any:
    """Instantiate a ``torch.*`` activation class from its dotted path."""
    module_name, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)()
