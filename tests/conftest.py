"""Fixtures shared by the test suites: tiny models, the shared data folder, a server process."""

from __future__ import annotations

import os

# Tests never touch the network. Set before anything imports huggingface_hub, which reads these
# once, hence the imports below come after it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rerankd_server.process import ServerProcess, start_server
from rerankd_server.tiny_models import build_tiny_model

# name -> build_tiny_model arguments. "default" records no activation, leaving it to Sentence
# Transformers' rule (Sigmoid for one label). The suite's default model ("modernbert") is in the
# layout the Ettin rerankers ship in; the others cover the single-module classifier layout of
# earlier cross-encoders (ModernBERT, and BERT with token_type_ids), a BERT pooler chain and an
# LLM reranker.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "modernbert": {"kind": "modernbert", "layout": "ettin", "activation": "default"},
    "ettin": {"kind": "modernbert", "layout": "ettin"},  # exactly the release: raw logits
    "modernbert_classifier": {"kind": "modernbert", "layout": "classifier"},
    "modernbert_identity": {
        "kind": "modernbert",
        "layout": "classifier",
        "activation": "torch.nn.Identity",
    },
    "bert": {"kind": "bert", "layout": "classifier", "activation": "default"},
    "bert_identity": {"kind": "bert", "layout": "classifier", "activation": "torch.nn.Identity"},
    "bert_pooler_mean": {"kind": "bert", "layout": "pooler", "pooling": "mean"},
    "causal": {"layout": "causal-lm"},  # a Qwen3-shaped LLM reranker: chat template, LogitScore
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-weight cross-encoders saved by Sentence Transformers, built once per session."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {name: build_tiny_model(root / name, **kwargs) for name, kwargs in TINY_MODELS.items()}


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder (reference data beside the repository), or skip when absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        pytest.skip(f"shared folder {path} is absent (it sits beside the repository checkout)")
    return path


@pytest.fixture(scope="module")
def tiny_server_process(tiny_models: dict[str, Path]) -> Iterator[ServerProcess]:
    """The real sidecar (``python -m rerankd_server``) serving tiny_models["modernbert"].

    On teardown it is stopped with SIGTERM and must exit 0, the lifecycle contract.
    """
    server = start_server(tiny_models["modernbert"])
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"server exited with {code} on SIGTERM. Output:\n{server.output()}"
