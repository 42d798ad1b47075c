"""Scores through a real server equal sentence_transformers.CrossEncoder.predict (fp32, 1e-5).

For every tiny model layout (the Ettin module chain with its raw logits or the default sigmoid,
a BERT pooler chain with mean pooling, single-module classifiers; ModernBERT without
token_type_ids, BERT with them; ModernBERT also packed, without padding), for short, long and
over-long documents, with and without raw_scores, both truncation sides, through Rerank and
Score. Where ../shared holds the trained man-page model, in both its layouts, the same holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.settings import Settings
from support.reference import predict
from support.sidecar import run_sidecar

QUERY = "how do I list the files in a directory"
WORDS = (
    "the quick brown fox jumps over a lazy dog while files are listed in the directory"
).split()


def text(words: int, offset: int = 0) -> str:
    return " ".join(WORDS[(i + offset) % len(WORDS)] for i in range(words))


DOCS = [
    "ls lists directory contents",
    "",
    text(3),
    text(40, 1),
    text(90, 2),  # near the tiny models' 128-token limit with the query
    text(400, 3),  # over-long: truncated
    text(2000, 4),  # far over-long
    "ünïcödé — 文字 and emoji 🙂 in a document",
]


@pytest.fixture(
    scope="module",
    params=[
        "ettin",
        "ettin packed",
        "modernbert",
        "bert_pooler_mean",
        "modernbert_classifier",
        "modernbert_identity packed",
        "bert",
        "bert_identity",
    ],
)
def served(
    request: pytest.FixtureRequest, tiny_models: dict[str, Path]
) -> Iterator[tuple[Path, rerank_pb2_grpc.RerankServiceStub]]:
    name, _, attention = request.param.partition(" ")
    path = tiny_models[name]
    settings = Settings(
        model=str(path),
        device="cpu",
        dtype="float32",
        max_batch_tokens=512,
        attention=attention or "auto",
    )
    with run_sidecar(settings) as running, grpc.insecure_channel(running.target) as channel:
        yield path, rerank_pb2_grpc.RerankServiceStub(channel)


def reference(
    path: Path, pairs: list[tuple[str, str]], *, raw: bool, side: str = "right"
) -> np.ndarray:
    return predict(path, pairs, raw=raw, side=side)


@pytest.mark.parametrize("raw", [False, True])
def test_rerank_scores_equal_cross_encoder(
    served: tuple[Path, rerank_pb2_grpc.RerankServiceStub], raw: bool
) -> None:
    path, stub = served
    request = pb.RerankRequest(
        query=QUERY,
        documents=[pb.Document(id=f"d{i}", text=t) for i, t in enumerate(DOCS)],
        raw_scores=raw,
    )
    response = stub.Rerank(request)
    expected = reference(path, [(QUERY, d) for d in DOCS], raw=raw)
    got = {r.index: r.score for r in response.results}
    assert sorted(got) == list(range(len(DOCS)))
    np.testing.assert_allclose([got[i] for i in range(len(DOCS))], expected, atol=1e-5, rtol=0)
    assert [r.id for r in response.results] == [f"d{r.index}" for r in response.results]
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    assert response.usage.truncated_pairs == 2
    assert response.model == str(path)


def test_score_equals_cross_encoder_and_keeps_order(
    served: tuple[Path, rerank_pb2_grpc.RerankServiceStub],
) -> None:
    path, stub = served
    pairs = [(f"{QUERY} {i}", d) for i, d in enumerate(DOCS)] + [(text(300), "short text")]
    response = stub.Score(pb.ScoreRequest(pairs=[pb.Pair(query=q, text=t) for q, t in pairs]))
    np.testing.assert_allclose(
        response.scores, reference(path, pairs, raw=False), atol=1e-5, rtol=0
    )


def test_start_truncation_equals_cross_encoder_with_left_truncation(
    served: tuple[Path, rerank_pb2_grpc.RerankServiceStub],
) -> None:
    path, stub = served
    docs = [text(400, 3), text(150, 5), text(5)]
    response = stub.Score(
        pb.ScoreRequest(
            pairs=[pb.Pair(query=QUERY, text=d) for d in docs],
            truncation=pb.TRUNCATION_START,
            raw_scores=True,
        )
    )
    expected = reference(path, [(QUERY, d) for d in docs], raw=True, side="left")
    np.testing.assert_allclose(response.scores, expected, atol=1e-5, rtol=0)
    end = stub.Score(pb.ScoreRequest(pairs=[pb.Pair(query=QUERY, text=docs[0])], raw_scores=True))
    assert end.scores[0] != pytest.approx(response.scores[0], abs=1e-6)


def test_truncation_none_refuses_over_long_documents(
    served: tuple[Path, rerank_pb2_grpc.RerankServiceStub],
) -> None:
    _, stub = served
    docs = [pb.Document(text="short"), pb.Document(text=text(400))]
    with pytest.raises(grpc.RpcError) as err:
        stub.Rerank(pb.RerankRequest(query=QUERY, documents=docs, truncation=pb.TRUNCATION_NONE))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 1" in err.value.details()
    fine = stub.Rerank(
        pb.RerankRequest(query=QUERY, documents=docs[:1], truncation=pb.TRUNCATION_NONE)
    )
    assert len(fine.results) == 1


def test_model_info_reports_what_cross_encoder_uses(
    served: tuple[Path, rerank_pb2_grpc.RerankServiceStub],
) -> None:
    path, stub = served
    info = stub.GetModelInfo(pb.GetModelInfoRequest()).model
    model = CrossEncoder(str(path), device="cpu")
    assert info.max_input_tokens == model.max_seq_length
    assert info.activation.rsplit(".", 1)[-1] == type(model.activation_fn).__name__
    assert (info.dtype, info.device) == ("float32", "cpu")
    assert info.modules == chain(model)


def chain(model: CrossEncoder) -> str:
    """The module chain as GetModelInfo reports it, read off Sentence Transformers' objects."""
    names = []
    for module in model:
        kind = type(module).__name__
        if kind == "Transformer":
            names.append(f"Transformer({type(module.model).__name__})")
        elif kind == "Pooling":
            names.append(f"Pooling({module.pooling_mode})")
        elif kind == "Dense":
            act = type(module.activation_function).__name__
            names.append("Dense" if act == "Identity" else f"Dense({act})")
        else:
            names.append(kind)
    return " > ".join(names)


@pytest.mark.parametrize("name", ["manpages-minilm-l6-ce", "manpages-minilm-l6-ce-modular"])
def test_trained_manpages_model_matches_cross_encoder(shared_dir: Path, name: str) -> None:
    """The trained model, as one classifier and rebuilt as Transformer > Pooling(cls) >
    Dense(Tanh) > Dense: both score as CrossEncoder does."""
    path = shared_dir / "models" / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    docs = ["ls - list directory contents", "cp - copy files and directories", text(600), ""]
    settings = Settings(model=str(path), device="cpu", dtype="float32")
    with run_sidecar(settings) as running, grpc.insecure_channel(running.target) as channel:
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        response = stub.Rerank(
            pb.RerankRequest(query=QUERY, documents=[pb.Document(text=d) for d in docs])
        )
        info = stub.GetModelInfo(pb.GetModelInfoRequest()).model
    assert info.modules == chain(CrossEncoder(str(path), device="cpu"))
    got = {r.index: r.score for r in response.results}
    expected = reference(path, [(QUERY, d) for d in docs], raw=False)
    np.testing.assert_allclose([got[i] for i in range(len(docs))], expected, atol=1e-5, rtol=0)
    assert got[0] > got[1]  # the trained model prefers ls over cp for this query
