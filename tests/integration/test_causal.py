"""LLM rerankers (a causal LM read through its chat template, then LogitScore) score through a
real server exactly as ``CrossEncoder.predict`` scores them (fp32, 1e-5).

The tiny model is Qwen3-shaped and built by Sentence Transformers' own modules: a chat template
carrying the query and document roles, ``add_generation_prompt`` from its processing kwargs,
LogitScore over "yes" and "no" (or "yes" alone), with or without a prompt (the instruction).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.errors import ModelLoadError
from rerankd_server.scoring.hf import HFCrossEncoder, Placement
from rerankd_server.settings import Settings
from rerankd_server.tiny_models import build_tiny_model
from support.reference import predict
from support.sidecar import run_sidecar

QUERY = "how do I list the files in a directory"
WORDS = "the quick brown fox jumps over a lazy dog while files are listed".split()


def text(words: int, offset: int = 0) -> str:
    return " ".join(WORDS[(i + offset) % len(WORDS)] for i in range(words))


DOCS = ["ls lists directory contents", "", text(20), text(120, 1), text(600, 2), "ünïcödé 文字 🙂"]
VARIANTS = {
    "yes-no": {"logit_score": "yes-no"},
    "yes, with an instruction": {"logit_score": "yes", "prompt": "Find the man page for it"},
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, rerank_pb2_grpc.RerankServiceStub]]:
    path = build_tiny_model(
        tmp_path_factory.mktemp("causal") / "m", layout="causal-lm", **VARIANTS[request.param]
    )
    settings = Settings(model=str(path), device="cpu", dtype="float32", max_batch_tokens=1024)
    with run_sidecar(settings) as running, grpc.insecure_channel(running.target) as channel:
        yield path, rerank_pb2_grpc.RerankServiceStub(channel)


def reference(
    path: Path, pairs: list[tuple[str, str]], *, raw: bool, side: str = "right"
) -> np.ndarray:
    # One pair per batch: Sentence Transformers' left padding shifts positions, which moves its
    # own scores by ~1e-5 between batch sizes; rerankd scores every pair as it scores it alone.
    return predict(path, pairs, raw=raw, side=side, batch_size=1)


@pytest.mark.parametrize("raw", [False, True])
def test_rerank_equals_cross_encoder(
    served: tuple[Path, rerank_pb2_grpc.RerankServiceStub], raw: bool
) -> None:
    path, stub = served
    response = stub.Rerank(
        pb.RerankRequest(query=QUERY, documents=[pb.Document(text=d) for d in DOCS], raw_scores=raw)
    )
    got = {r.index: r.score for r in response.results}
    expected = reference(path, [(QUERY, d) for d in DOCS], raw=raw)
    np.testing.assert_allclose([got[i] for i in range(len(DOCS))], expected, atol=1e-5, rtol=0)
    assert response.usage.truncated_pairs == 2  # the 120- and 600-word documents


def test_score_and_start_truncation_equal_cross_encoder(
    served: tuple[Path, rerank_pb2_grpc.RerankServiceStub],
) -> None:
    path, stub = served
    pairs = [(f"{QUERY} {i}", d) for i, d in enumerate(DOCS)] + [(text(300), "ls")]
    for truncation, side in ((pb.TRUNCATION_END, "right"), (pb.TRUNCATION_START, "left")):
        response = stub.Score(
            pb.ScoreRequest(
                pairs=[pb.Pair(query=q, text=t) for q, t in pairs],
                truncation=truncation,
                raw_scores=True,
            )
        )
        expected = reference(path, pairs, raw=True, side=side)
        np.testing.assert_allclose(response.scores, expected, atol=1e-5, rtol=0)


def test_chunks_fit_the_template_and_score_as_cross_encoder(
    served: tuple[Path, rerank_pb2_grpc.RerankServiceStub],
) -> None:
    path, stub = served
    doc = text(900, 3)
    response = stub.Rerank(
        pb.RerankRequest(
            query=QUERY,
            documents=[pb.Document(text=doc)],
            chunking=pb.Chunking(reduce=pb.CHUNK_REDUCE_MAX),
            raw_scores=True,
        )
    )
    [result] = response.results
    assert result.chunk.count > 1 and response.usage.truncated_pairs == 0
    chunk = doc.encode()[result.chunk.start_byte : result.chunk.end_byte].decode()
    expected = float(reference(path, [(QUERY, chunk)], raw=True)[0])
    assert result.score == pytest.approx(expected, abs=1e-5)  # batched with other chunks


def test_model_info_reports_the_chain(
    served: tuple[Path, rerank_pb2_grpc.RerankServiceStub],
) -> None:
    path, stub = served
    info = stub.GetModelInfo(pb.GetModelInfoRequest()).model
    model = CrossEncoder(str(path), device="cpu")
    score = model[1]
    tokens = f"{score.true_token_id}"
    if score.false_token_id is not None:
        tokens += f" - {score.false_token_id}"
    assert info.modules == f"Transformer(Qwen3ForCausalLM) > LogitScore({tokens})"
    assert info.max_input_tokens == model.max_seq_length
    assert info.activation.endswith("Sigmoid")


def test_a_causal_lm_without_the_chain_files_is_refused(
    served: tuple[Path, rerank_pb2_grpc.RerankServiceStub], tmp_path: Path
) -> None:
    path, _ = served
    bare = tmp_path / "bare"
    shutil.copytree(path, bare)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        (bare / name).unlink()
    shutil.rmtree(bare / "1_LogitScore")
    with pytest.raises(ModelLoadError, match="causal language model without Sentence"):
        HFCrossEncoder(str(bare), Placement("cpu", "float32", "sdpa"))


def test_chat_messages_without_a_chat_template_are_refused(
    served: tuple[Path, rerank_pb2_grpc.RerankServiceStub], tmp_path: Path
) -> None:
    path, _ = served
    broken = tmp_path / "no-template"
    shutil.copytree(path, broken)
    (broken / "chat_template.jinja").unlink()
    config = json.loads((broken / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (broken / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no chat template"):
        HFCrossEncoder(str(broken), Placement("cpu", "float32", "sdpa"))


CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] in ['system', 'user', 'assistant'] %}{{ message['content'] }}"
    "{% endif %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)


def _template(text: str) -> Callable[[Path], None]:
    return lambda path: (path / "chat_template.jinja").write_text(text)


def _edit_json(name: str, **values: Any) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        config = json.loads((path / name).read_text())
        for key, value in values.items():
            target = config
            *parents, last = key.split(".")
            for parent in parents:
                target = target[parent]
            target[last] = value
        (path / name).write_text(json.dumps(config))

    return edit


BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "a chat template that renders only the user, system and assistant roles": (
        _template(CHATML),
        "the query and document text does not reach the rendered prompt",
    ),
    "a chat template that raises": (
        _template("{{ raise_exception('this template takes no documents') }}"),
        "cannot render a .query, document. pair: this template takes no documents",
    ),
    "sanitize_control_tokens": (
        _edit_json(
            "sentence_bert_config.json",
            **{"processing_kwargs.chat_template.sanitize_control_tokens": True},
        ),
        "sanitize_control_tokens, which rerankd does not serve",
    ),
    "an answer token outside the vocabulary": (
        _edit_json("1_LogitScore/config.json", true_token_id=1_000_000),
        "cannot score a batch of pairs: IndexError",
    ),
    "an activation that halves its input": (
        _edit_json("config_sentence_transformers.json", activation_fn="torch.nn.GLU"),
        "cannot score a batch of pairs: RuntimeError: Halving dimension must be even",
    ),
}


@pytest.fixture(scope="module")
def causal_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("causal") / "m", layout="causal-lm")


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_model_that_cannot_score_pairs_is_refused_at_load(
    causal_model: Path, tmp_path: Path, name: str
) -> None:
    edit, message = BROKEN[name]
    broken = tmp_path / "broken"
    shutil.copytree(causal_model, broken)
    edit(broken)
    with pytest.raises(ModelLoadError, match=message) as refusal:
        HFCrossEncoder(str(broken), Placement("cpu", "float32", "sdpa"))
    assert "\n" not in str(refusal.value)


def test_sentence_transformers_refuses_a_template_without_the_pair_roles_too(
    causal_model: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "chatml"
    shutil.copytree(causal_model, broken)
    _template(CHATML)(broken)
    with pytest.raises(ValueError, match="cannot carry a 'query'/'document' pair"):
        CrossEncoder(str(broken), device="cpu").predict([("list files", "ls")])
