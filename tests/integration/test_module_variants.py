"""Every module option Sentence Transformers saves scores as ``CrossEncoder.predict`` does.

Each variant is built from Sentence Transformers' own modules around a tiny random backbone and
saved by ``CrossEncoder.save_pretrained`` (or edited into an older release's form), then scored
by rerankd's scorer, padded and, for ModernBERT, packed (fp32, 1e-5).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import CrossEncoder
from sentence_transformers.base.modules import Dense, Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Dropout, LayerNorm, Pooling

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.errors import ModelLoadError
from rerankd_server.scoring.base import Truncation
from rerankd_server.scoring.hf import HFCrossEncoder, Placement
from rerankd_server.settings import Settings
from rerankd_server.tiny_models import HIDDEN_SIZE, build_tiny_model
from support.sidecar import run_sidecar

PAIRS = [
    ("how do i list files", "ls lists the files in a directory"),
    ("weather", "tomorrow it will rain in the morning " * 30),  # over-long: truncated
    ("q", ""),
    ("bake bread", "mix the flour, water, salt and yeast, then let the dough rise"),
]
H = HIDDEN_SIZE

Head = Callable[[], list[torch.nn.Module]]


def _scores(path: Path, attention: str) -> np.ndarray:
    scorer = HFCrossEncoder(str(path), Placement("cpu", "float32", attention))
    tokens = scorer.tokenize(PAIRS, Truncation.DEFAULT)
    logits = scorer.forward(scorer.collate(tokens.ids, tokens.type_ids))
    return np.asarray(scorer.activate(logits), dtype=np.float64)


def _assert_parity(path: Path, packs: bool) -> None:
    expected = CrossEncoder(str(path), device="cpu").predict(PAIRS, batch_size=2)
    for attention in ("sdpa", "packed") if packs else ("sdpa",):
        np.testing.assert_allclose(_scores(path, attention), expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def headless(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny ModernBERT and BERT backbones, headless, as a Transformer module reads them."""
    root = tmp_path_factory.mktemp("headless")
    return {
        kind: build_tiny_model(root / kind, kind, layout="pooler")  # type: ignore[arg-type]
        for kind in ("modernbert", "bert")
    }


def _save(root: Path, backbone: Path, head: list[torch.nn.Module], **kwargs: Any) -> Path:
    torch.manual_seed(5)
    transformer = Transformer(str(backbone), transformer_task="feature-extraction")
    for module in head:  # spread the head's weights so a layer left unloaded would show
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter, 0.0, 0.3)
    CrossEncoder(modules=[transformer, *head], **kwargs).save_pretrained(str(root))
    return root


VARIANTS: dict[str, Head] = {
    "mean, Dense with bias and Tanh": lambda: [
        Pooling(H, pooling_mode="mean"),
        Dense(H, H, bias=True, activation_function=torch.nn.Tanh()),
        Dense(H, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
    ],
    "max": lambda: [
        Pooling(H, pooling_mode="max"),
        Dense(H, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
    ],
    "lasttoken": lambda: [
        Pooling(H, pooling_mode="lasttoken"),
        Dense(H, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
    ],
    "weightedmean": lambda: [
        Pooling(H, pooling_mode="weightedmean"),
        Dense(H, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
    ],
    "mean_sqrt_len_tokens": lambda: [
        Pooling(H, pooling_mode="mean_sqrt_len_tokens"),
        Dense(H, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
    ],
    "cls and mean concatenated": lambda: [
        Pooling(H, pooling_mode=("cls", "mean")),
        Dense(2 * H, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
    ],
    "Normalize, Dropout, LayerNorm, a residual Dense": lambda: [
        Pooling(H, pooling_mode="cls"),
        Dense(H, H, bias=False, activation_function=torch.nn.SiLU(), use_residual=True),
        Dropout(0.3),
        LayerNorm(H),
        Normalize(),
        Dense(H, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
    ],
    "a Dense on the token embeddings before Pooling": lambda: [
        Dense(
            H,
            H,
            activation_function=torch.nn.ReLU(),
            module_input_name="token_embeddings",
        ),
        Pooling(H, pooling_mode="mean"),
        Dense(H, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
    ],
}


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_module_variants_score_as_cross_encoder(
    headless: dict[str, Path], tmp_path: Path, kind: str, name: str
) -> None:
    path = _save(tmp_path / "model", headless[kind], VARIANTS[name]())
    _assert_parity(path, packs=kind == "modernbert")


@pytest.mark.parametrize("include_prompt", [True, False])
def test_a_default_prompt_is_prepended_and_excluded_from_pooling_as_configured(
    headless: dict[str, Path], tmp_path: Path, include_prompt: bool
) -> None:
    head = [
        Pooling(H, pooling_mode="mean", include_prompt=include_prompt),
        Dense(H, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
    ]
    path = _save(
        tmp_path / "prompted",
        headless["modernbert"],
        head,
        prompts={"query": "search query: "},
        default_prompt_name="query",
    )
    _assert_parity(path, packs=True)
    plain = tmp_path / "plain"
    shutil.copytree(path, plain)
    config = json.loads((plain / "config_sentence_transformers.json").read_text())
    (plain / "config_sentence_transformers.json").write_text(
        json.dumps({**config, "default_prompt_name": None})
    )
    assert not np.allclose(_scores(path, "sdpa"), _scores(plain, "sdpa"), atol=1e-4)


def test_legacy_pooling_keys_and_a_pytorch_bin_module(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """An earlier release's save: boolean ``pooling_mode_*`` keys, ``word_embedding_dimension``
    and a module's weights in ``pytorch_model.bin``."""
    path = tmp_path / "legacy"
    shutil.copytree(tiny_models["bert_pooler_mean"], path)
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": H,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    dense = path / "2_Dense"
    torch.save(load_file(dense / "model.safetensors"), dense / "pytorch_model.bin")
    (dense / "model.safetensors").unlink()
    _assert_parity(path, packs=False)
    assert (
        _scores(path, "sdpa").tolist() == _scores(tiny_models["bert_pooler_mean"], "sdpa").tolist()
    )


def test_chunks_of_a_prompted_model_leave_room_for_the_prompt(
    headless: dict[str, Path], tmp_path: Path
) -> None:
    """A chunk is cut so the pair, prompt included, fits: no chunk is truncated again."""
    head = [
        Pooling(H, pooling_mode="cls"),
        Dense(H, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
    ]
    prompt = "given a web search query, judge whether the passage answers it: "
    path = _save(
        tmp_path / "m", headless["bert"], head, prompts={"q": prompt}, default_prompt_name="q"
    )
    query, doc = "list files", " ".join(["the files are listed in the directory"] * 60)
    settings = Settings(model=str(path), device="cpu", dtype="float32")
    with run_sidecar(settings) as running, grpc.insecure_channel(running.target) as channel:
        response = rerank_pb2_grpc.RerankServiceStub(channel).Rerank(
            pb.RerankRequest(
                query=query,
                documents=[pb.Document(text=doc)],
                chunking=pb.Chunking(reduce=pb.CHUNK_REDUCE_FIRST),
                raw_scores=True,
            )
        )
    [result] = response.results
    assert result.chunk.count > 1 and response.usage.truncated_pairs == 0
    chunk = doc.encode()[result.chunk.start_byte : result.chunk.end_byte].decode()
    model = CrossEncoder(str(path), device="cpu")
    tokens = model.tokenizer(prompt + query, chunk)["input_ids"]
    assert len(tokens) <= model.max_seq_length
    expected = model.predict([(query, chunk)], activation_fn=torch.nn.Identity())
    assert result.score == pytest.approx(float(expected[0]), abs=1e-5)


def test_a_head_that_scores_each_token_is_refused(
    headless: dict[str, Path], tmp_path: Path
) -> None:
    """A Dense writing scores from the token embeddings, with no Pooling before it, gives a
    score per token, not per pair."""
    head = [
        Dense(H, 1, module_input_name="token_embeddings", module_output_name="scores"),
    ]
    path = _save(tmp_path / "per-token", headless["modernbert"], head)
    with pytest.raises(ModelLoadError, match="does not give one score per pair"):
        HFCrossEncoder(str(path), Placement("cpu", "float32", "sdpa"))
