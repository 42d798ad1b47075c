"""Chunked long documents, several models, the score cache, streaming and score options."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.chunking import ChunkPlan, document_budget, plan_chunks, plan_documents
from rerankd_server.scoring.hf import HFCrossEncoder, resolve_placement
from rerankd_server.scoring.pairs import CLIP_CHARS_PER_TOKEN
from rerankd_server.settings import Settings
from support.sidecar import RunningSidecar, run_sidecar

QUERY = "how do I list the files in a directory"
WORDS = "files are listed in the directory while the quick brown fox jumps over a lazy dog".split()


def text(words: int, offset: int = 0) -> str:
    return " ".join(WORDS[(i * 7 + offset) % len(WORDS)] for i in range(words))


@pytest.fixture(scope="module")
def two_models(tiny_models: dict[str, Path]) -> Iterator[RunningSidecar]:
    settings = Settings(
        model=f"modern={tiny_models['modernbert']}",
        extra_models=(f"bert={tiny_models['bert_identity']}",),
        device="cpu",
        max_batch_tokens=1024,
        score_cache_bytes=1 << 20,
    )
    with run_sidecar(settings, metrics=True) as running:
        yield running


@pytest.fixture
def stub(two_models: RunningSidecar) -> Iterator[rerank_pb2_grpc.RerankServiceStub]:
    with grpc.insecure_channel(two_models.target) as channel:
        yield rerank_pb2_grpc.RerankServiceStub(channel)


def fitted_plan(
    scorer: HFCrossEncoder,
    doc: str,
    spans: list[tuple[int, int]],
    budget: int,
    overlap: int,
    max_chunks: int,
) -> ChunkPlan:
    """``plan_chunks`` from every token of the document, its budget lowered until each chunk's
    own text, tokenized alone, fits in it."""
    while True:
        plan = plan_chunks(doc, spans, budget, overlap, max_chunks)
        if len(plan.spans) == 1:
            return plan
        longest = max(map(len, scorer.token_spans([doc[a:b] for a, b in plan.spans])))
        if longest <= budget:
            return plan
        budget -= longest - budget


def chunk_texts(path: Path, query: str, doc: str, overlap: int, max_chunks: int) -> list[str]:
    """The chunks rerankd should score, computed independently from the tokenizer."""
    scorer = HFCrossEncoder(str(path), resolve_placement("cpu", "float32", "sdpa"))
    spans = scorer.token_spans([query, doc])
    info = scorer.info
    budget = document_budget(info.max_input_tokens, info.pair_special_tokens, len(spans[0]))
    plan = fitted_plan(scorer, doc, spans[1], budget, overlap, max_chunks)
    return [doc[a:b] for a, b in plan.spans]


@pytest.mark.parametrize(
    ("reduce", "overlap"),
    [
        (pb.CHUNK_REDUCE_MAX, 0),
        (pb.CHUNK_REDUCE_MAX, 20),
        (pb.CHUNK_REDUCE_MEAN, 10),
        (pb.CHUNK_REDUCE_FIRST, 0),
    ],
)
def test_chunked_scores_reduce_cross_encoder_over_the_same_chunks(
    stub: rerank_pb2_grpc.RerankServiceStub, tiny_models: dict[str, Path], reduce: int, overlap: int
) -> None:
    docs = [text(600, 1), text(30, 2), text(350, 3), ""]
    response = stub.Rerank(
        pb.RerankRequest(
            query=QUERY,
            documents=[pb.Document(text=d) for d in docs],
            chunking=pb.Chunking(overlap_tokens=overlap, max_chunks=6, reduce=reduce),
            model="modern",
        )
    )
    model = CrossEncoder(str(tiny_models["modernbert"]), device="cpu")
    by_index = {r.index: r for r in response.results}
    for i, doc in enumerate(docs):
        chunks = chunk_texts(tiny_models["modernbert"], QUERY, doc, overlap, 6)
        scores = model.predict([(QUERY, c) for c in chunks], batch_size=8)
        expected = {
            pb.CHUNK_REDUCE_MAX: float(np.max(scores)),
            pb.CHUNK_REDUCE_MEAN: float(np.mean(scores)),
            pb.CHUNK_REDUCE_FIRST: float(scores[0]),
        }[reduce]
        result = by_index[i]
        assert result.score == pytest.approx(expected, abs=1e-5)
        assert result.chunk.count == len(chunks)
        best = int(np.argmax(scores)) if reduce != pb.CHUNK_REDUCE_FIRST else 0
        assert result.chunk.index == best
        chunk = doc.encode()[result.chunk.start_byte : result.chunk.end_byte].decode()
        assert chunk == chunks[best]
    assert by_index[0].chunk.count == 6  # 600 words hit the cap of six chunks
    assert by_index[1].chunk.count == 1 and by_index[3].chunk.count == 1
    assert response.usage.scored_pairs == sum(r.chunk.count for r in response.results)


#: Documents long enough to be cut before they are tokenized for chunking, in the shapes that
#: make a cut hard: spaced words, CJK, words joined by no-break spaces or carriage returns, one
#: word far longer than the cut, a space only past it, more characters per token than the cut
#: allows for (checked, and tokenized whole).
LONG_DOCUMENTS = {
    "spaced": text(20_000),
    "CJK": "文字列を検索する" * 4_000,
    "no-break spaces": "\u00a0".join(WORDS * 1_500),
    "carriage returns": "\r".join(WORDS * 1_500),
    "one long word": "x" * 60_000 + " " + text(100),
    "short then unspaced": text(30) + " " + "ab" * 30_000,
    "words longer than the tokenizer reads": " ".join(["x" * 150] * 2_000),  # [UNK] each
}


@pytest.mark.parametrize("model", ["modernbert", "bert"])
@pytest.mark.parametrize(("overlap", "max_chunks"), [(0, 1), (10, 3), (40, 64)])
def test_chunks_of_long_documents_are_planned_from_their_start_alone(
    tiny_models: dict[str, Path], model: str, overlap: int, max_chunks: int
) -> None:
    """The plans equal those made from every token of each document, while the tokenizer
    reads about as much of a long document as its chunks can cover."""
    scorer = HFCrossEncoder(str(tiny_models[model]), resolve_placement("cpu", "float32", "sdpa"))
    info = scorer.info
    texts = list(LONG_DOCUMENTS.values())
    read: list[int] = []

    def spans_of(batch: Sequence[str]) -> list[list[tuple[int, int]]]:
        read.extend(map(len, batch))
        return scorer.token_spans(batch)

    plans = plan_documents(
        spans_of, QUERY, texts, info.max_input_tokens, info.pair_special_tokens, overlap, max_chunks
    )
    budget = document_budget(
        info.max_input_tokens, info.pair_special_tokens, len(scorer.token_spans([QUERY])[0])
    )
    whole = scorer.token_spans(texts)
    assert plans == [
        fitted_plan(scorer, t, spans, budget, overlap, max_chunks)
        for t, spans in zip(texts, whole, strict=True)
    ]
    assert all(len(plan.spans) == max_chunks for plan in plans[:4])  # all long enough to fill
    covered = (max_chunks * budget + 1) * CLIP_CHARS_PER_TOKEN
    if covered < len(texts[0]):  # the spaced document goes on past what its chunks cover
        assert read[1] <= covered  # (read[0] is the query)


@pytest.mark.parametrize("model", ["modern", "bert"])
@pytest.mark.parametrize(
    "doc", ["alpha " * 3000, text(2000), "unbreakable" * 400 + " " + text(500)], ids=["a", "b", "c"]
)
def test_chunks_fit_the_model_beside_a_short_query(
    stub: rerank_pb2_grpc.RerankServiceStub, model: str, doc: str
) -> None:
    # Spans re-tokenized on their own may take more tokens than in the whole document; the
    # plan makes room, so no chunk is truncated and TRUNCATION_NONE does not refuse the call.
    request = pb.RerankRequest(
        query="list files",
        documents=[pb.Document(text=doc)],
        model=model,
        chunking=pb.Chunking(max_chunks=16),
        truncation=pb.TRUNCATION_NONE,
    )
    response = stub.Rerank(request)
    assert response.results[0].chunk.count > 1 and response.usage.truncated_pairs == 0


def test_documents_that_fit_score_as_without_chunking(
    stub: rerank_pb2_grpc.RerankServiceStub,
) -> None:
    docs = [pb.Document(text=text(20, i)) for i in range(5)]
    plain = stub.Rerank(pb.RerankRequest(query=QUERY, documents=docs, model="modern"))
    chunked = stub.Rerank(
        pb.RerankRequest(query=QUERY, documents=docs, model="modern", chunking=pb.Chunking())
    )
    assert [(r.index, r.score) for r in plain.results] == [
        (r.index, r.score) for r in chunked.results
    ]


def test_two_models_give_each_their_own_scores(
    stub: rerank_pb2_grpc.RerankServiceStub, tiny_models: dict[str, Path]
) -> None:
    docs = [text(10, 1), text(40, 2), "ls"]
    pairs = [(QUERY, d) for d in docs]
    for name, key in (("modern", "modernbert"), ("bert", "bert_identity"), ("", "modernbert")):
        response = stub.Score(
            pb.ScoreRequest(pairs=[pb.Pair(query=q, text=t) for q, t in pairs], model=name)
        )
        expected = CrossEncoder(str(tiny_models[key]), device="cpu").predict(pairs)
        np.testing.assert_allclose(response.scores, expected, atol=1e-5, rtol=0)
        assert response.model == (name or "modern")
    info = stub.GetModelInfo(pb.GetModelInfoRequest(model="bert"))
    assert info.model.name == "bert" and info.model.activation.endswith("Identity")
    assert [m.name for m in info.models] == ["modern", "bert"]
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(pb.ScoreRequest(pairs=[pb.Pair(query="q", text="t")], model="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "modern" in err.value.details() and "bert" in err.value.details()


def test_cache_hits_return_identical_results(stub: rerank_pb2_grpc.RerankServiceStub) -> None:
    docs = [pb.Document(id=str(i), text=f"cache probe {i} " + text(i * 5)) for i in range(12)]
    first = stub.Rerank(pb.RerankRequest(query="cache " + QUERY, documents=docs, model="bert"))
    again = stub.Rerank(pb.RerankRequest(query="cache " + QUERY, documents=docs, model="bert"))
    assert list(again.results) == list(first.results)
    assert (first.usage.cached_pairs, again.usage.cached_pairs) == (0, 12)
    assert again.usage.batches == 0 and again.usage.input_tokens == 0
    mixed = stub.Rerank(
        pb.RerankRequest(
            query="cache " + QUERY, documents=[*docs, pb.Document(text="new")], model="bert"
        )
    )
    assert mixed.usage.cached_pairs == 12 and mixed.usage.scored_pairs == 13
    assert {r.index: r.score for r in mixed.results if r.index < 12} == {
        r.index: r.score for r in first.results
    }
    other_model = stub.Rerank(
        pb.RerankRequest(query="cache " + QUERY, documents=docs, model="modern")
    )
    assert other_model.usage.cached_pairs == 0  # the model is part of the key


def test_cache_memory_is_bounded() -> None:
    from rerankd_server.cache import ScoreCache

    cache = ScoreCache(max_bytes=20_000)
    keys = [("m", "default", "q", f"document {i} " * 10) for i in range(500)]
    cache.put_many(keys, [(float(i), float(-i)) for i in range(500)])
    assert cache.bytes <= 20_000 and 0 < len(cache) < 500
    assert cache.get_many(keys[-1:]) == [(499.0, -499.0)] and cache.get_many(keys[:1]) == [None]


def test_score_and_rerank_agree_and_normalizations(stub: rerank_pb2_grpc.RerankServiceStub) -> None:
    docs = [text(5, i) for i in range(6)]
    raw = stub.Score(
        pb.ScoreRequest(
            pairs=[pb.Pair(query=QUERY, text=d) for d in docs],
            model="modern",
            normalization=pb.NORMALIZATION_RAW,
        )
    ).scores
    for normalization, expect in (
        (pb.NORMALIZATION_RAW, list(raw)),
        (pb.NORMALIZATION_SIGMOID, [1 / (1 + math.exp(-x)) for x in raw]),
        (pb.NORMALIZATION_MODEL, [1 / (1 + math.exp(-x)) for x in raw]),  # tiny model: sigmoid
    ):
        scored = stub.Score(
            pb.ScoreRequest(
                pairs=[pb.Pair(query=QUERY, text=d) for d in docs],
                model="modern",
                normalization=normalization,
            )
        ).scores
        reranked = stub.Rerank(
            pb.RerankRequest(
                query=QUERY,
                documents=[pb.Document(text=d) for d in docs],
                model="modern",
                normalization=normalization,
            )
        )
        assert {r.index: r.score for r in reranked.results} == dict(enumerate(scored))
        np.testing.assert_allclose(scored, expect, atol=1e-6, rtol=0)
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(
            pb.ScoreRequest(
                pairs=[pb.Pair(query="q", text="t")],
                raw_scores=True,
                normalization=pb.NORMALIZATION_SIGMOID,
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_min_score_and_top_n(stub: rerank_pb2_grpc.RerankServiceStub) -> None:
    docs = [pb.Document(text=text(4, i)) for i in range(10)]
    everything = stub.Rerank(pb.RerankRequest(query=QUERY, documents=docs, model="modern"))
    threshold = everything.results[4].score
    kept = stub.Rerank(
        pb.RerankRequest(query=QUERY, documents=docs, model="modern", min_score=threshold)
    )
    assert [r.index for r in kept.results] == [
        r.index for r in everything.results if r.score >= threshold
    ]
    both = stub.Rerank(
        pb.RerankRequest(query=QUERY, documents=docs, model="modern", min_score=threshold, top_n=2)
    )
    assert [r.index for r in both.results] == [r.index for r in everything.results[:2]]
    zero = stub.Rerank(pb.RerankRequest(query=QUERY, documents=docs, model="modern", min_score=0.0))
    assert len(zero.results) == 10  # min_score 0 is set, and all sigmoid scores pass it


def test_stream_gives_the_same_results_as_unary_calls(
    stub: rerank_pb2_grpc.RerankServiceStub,
) -> None:
    requests = [
        pb.RerankRequest(
            query=f"stream query {i}",
            documents=[
                pb.Document(id=f"{i}-{j}", text=text(j * 3 + i, i)) for j in range(1 + i % 7)
            ],
            top_n=3,
            model="modern" if i % 2 else "bert",
        )
        for i in range(40)
    ]
    bad = pb.RerankRequest(query="", documents=[pb.Document(text="x")])
    items = [pb.RerankStreamRequest(request_id=f"r{i}", request=r) for i, r in enumerate(requests)]
    items.insert(7, pb.RerankStreamRequest(request_id="bad", request=bad))
    replies = {reply.request_id: reply for reply in stub.RerankStream(iter(items), timeout=60)}
    assert set(replies) == {item.request_id for item in items}
    assert replies["bad"].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    for i, request in enumerate(requests):
        reply = replies[f"r{i}"]
        assert reply.code == 0, reply.message
        unary = stub.Rerank(request)
        assert [(r.index, r.id, r.score) for r in reply.response.results] == [
            (r.index, r.id, r.score) for r in unary.results
        ]


def test_stream_with_a_slow_reader_holds_the_server_to_its_bound(
    two_models: RunningSidecar,
) -> None:
    """Large responses fill the transport; then the server stops reading and scoring."""
    limit = two_models.sidecar.settings.stream_max_in_flight
    scheduler = two_models.sidecar.scheduler
    assert scheduler is not None
    before = scheduler.stats.pairs_scored

    def produce() -> Iterator[pb.RerankStreamRequest]:
        for i in range(30):
            docs = [pb.Document(text=f"{i} {j} " + "x" * 20_000) for j in range(4)]
            request = pb.RerankRequest(
                query="slow", documents=docs, model="modern", return_documents=True
            )
            yield pb.RerankStreamRequest(request_id=str(i), request=request)

    # A fixed 64 KiB receive window (no BDP growth), as a slow client on a busy link has.
    options = [("grpc.http2.bdp_probe", 0)]
    with grpc.insecure_channel(two_models.target, options=options) as channel:
        stream = rerank_pb2_grpc.RerankServiceStub(channel).RerankStream(produce(), timeout=60)
        first = next(stream)
        time.sleep(1.0)  # read nothing for a while
        scored_while_stalled = scheduler.stats.pairs_scored - before
        rest = list(stream)
    assert first.code == 0 and len(rest) == 29 and all(r.code == 0 for r in rest)
    # In flight: the permits, plus the few responses the transport's window holds.
    assert scored_while_stalled <= (limit + 4) * 4, scored_while_stalled
    assert scheduler.stats.pairs_scored - before == 30 * 4
