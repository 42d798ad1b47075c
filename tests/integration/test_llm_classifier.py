"""An LLM reranker saved as a sequence classifier (a Qwen3 ``...ForSequenceClassification``,
which reads its score at each row's last token that is not ``config.pad_token_id``) scores
through a real server as ``CrossEncoder.predict`` scores each pair alone, in any batch.

Its tokenizer pads with ``<|endoftext|>`` while its config names ``<|im_end|>`` (eos) as the pad,
as LLM checkpoints often do: padding with the tokenizer's id would make the classifier read a
pad position of every shorter row in a batch.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from transformers import Qwen3ForSequenceClassification

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.errors import ModelLoadError
from rerankd_server.scoring.hf import HFCrossEncoder, Placement
from rerankd_server.settings import Settings
from rerankd_server.tiny_models import build_causal_tokenizer, qwen3_config, save_cross_encoder
from support.reference import predict
from support.sidecar import run_sidecar

QUERY = "how do I list the files in a directory"
DOCS = [
    "ls",
    "ls lists directory contents",
    "the ls command lists the files of a directory, one per line, in long form with -l",
    "",
]


def llm_classifier(path: Path, pad: str | None) -> Path:
    """A two-layer Qwen3 sequence classifier whose config's pad is the token ``pad`` (None:
    no pad id at all), saved by Sentence Transformers."""
    tokenizer = build_causal_tokenizer()
    tokenizer.chat_template = None  # pairs are text pairs, as for any sequence classifier
    tokenizer.padding_side = "right"
    pad_id = None if pad is None else tokenizer.convert_tokens_to_ids(pad)
    config = qwen3_config(tokenizer, num_labels=1, pad_token_id=pad_id, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen3ForSequenceClassification(config)
    return save_cross_encoder(path, model, tokenizer, layout="classifier", readme="test model")


def test_each_pair_scores_as_it_does_alone_whatever_the_tokenizer_pads_with(
    tmp_path: Path,
) -> None:
    path = llm_classifier(tmp_path / "m", pad="<|im_end|>")
    settings = Settings(model=str(path), device="cpu", dtype="float32", max_batch_tokens=1024)
    with run_sidecar(settings) as running, grpc.insecure_channel(running.target) as channel:
        response = rerank_pb2_grpc.RerankServiceStub(channel).Rerank(
            pb.RerankRequest(query=QUERY, documents=[pb.Document(text=d) for d in DOCS])
        )
    got = [r.score for r in sorted(response.results, key=lambda r: r.index)]
    alone = predict(path, [(QUERY, d) for d in DOCS], raw=False, batch_size=1)
    np.testing.assert_allclose(got, alone, atol=1e-5, rtol=0)
    batched = predict(path, [(QUERY, d) for d in DOCS], raw=False, batch_size=len(DOCS))
    assert np.abs(batched - alone).max() > 1e-3  # the tokenizer's padding misleads it


def test_a_classifier_with_no_pad_id_is_refused_at_load(tmp_path: Path) -> None:
    path = llm_classifier(tmp_path / "m", pad=None)
    with pytest.raises(ModelLoadError, match=r"cannot score a batch of pairs: ValueError: .*pad"):
        HFCrossEncoder(str(path), Placement("cpu", "float32", "sdpa"))
