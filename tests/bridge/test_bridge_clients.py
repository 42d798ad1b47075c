"""The library adapters against real engines (osmem-server, noida-db) and real rerankd servers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import elasticsearch
import opensearchpy
import pytest
from conftest import Engine, FakeSidecar, dead_target

from rerankd import AsyncClient, Client
from rerankd_bridge import (
    RerankFailed,
    RerankOptions,
    RerankStats,
    async_rerank_search,
    rerank_search,
)
from rerankd_server.process import free_port
from rerankd_server.settings import Settings
from support.fake_scorer import FakeScorer, expected_logit
from support.sidecar import RunningSidecar, run_sidecar

QUERY = "list files in a directory"
BODY: dict[str, Any] = {"query": {"match": {"text": QUERY}}, "size": 5}


def sync_client(engine: Engine) -> Any:
    if engine.flavour == "opensearch":
        return opensearchpy.OpenSearch(engine.url)
    return elasticsearch.Elasticsearch(engine.url)


def async_client(engine: Engine) -> Any:
    if engine.flavour == "opensearch":
        return opensearchpy.AsyncOpenSearch(engine.url)
    return elasticsearch.AsyncElasticsearch(engine.url)


@pytest.fixture(scope="module")
def cross_encoder(tiny_models: dict[str, Path]) -> Iterator[Any]:
    """Sentence Transformers' CrossEncoder on the tiny model: the reference scores."""
    from sentence_transformers import CrossEncoder

    yield CrossEncoder(str(tiny_models["modernbert"]), device="cpu")


def first_stage(engine: Engine, body: dict[str, Any]) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = engine.request("POST", "/small/_search", body)["hits"]["hits"]
    return hits


@pytest.mark.slow
def test_order_equals_cross_encoder_order(
    engine: Engine, tiny_sidecar: RunningSidecar, cross_encoder: Any
) -> None:
    options = RerankOptions(window=12)
    with Client(tiny_sidecar.target) as reranker:
        out = rerank_search(
            sync_client(engine), reranker, index="small", body=BODY, options=options
        )
    assert out["rerank"]["status"] == "reranked"
    window = first_stage(engine, {**BODY, "size": 12})
    expected = cross_encoder.predict([(QUERY, h["_source"]["text"]) for h in window])
    by_id = {h["_id"]: float(s) for h, s in zip(window, expected, strict=True)}
    want = sorted(by_id, key=lambda i: -by_id[i])[:5]
    got = out["hits"]["hits"]
    assert [h["_score"] for h in got] == pytest.approx([by_id[i] for i in want], abs=1e-4)
    assert [h["_score"] for h in got] == sorted((h["_score"] for h in got), reverse=True)
    engine_scores = {h["_id"]: h["_score"] for h in window}
    for h in got:
        assert h["fields"]["_first_stage_score"] == [pytest.approx(engine_scores[h["_id"]])]
    assert out["hits"]["total"]["value"] >= len(window)


async def test_async_clients_match_sync(engine: Engine, tiny_sidecar: RunningSidecar) -> None:
    options = RerankOptions(window=8)
    with Client(tiny_sidecar.target) as reranker:
        sync_out = rerank_search(
            sync_client(engine), reranker, index="small", body=BODY, options=options
        )
    client = async_client(engine)
    try:
        async with AsyncClient(tiny_sidecar.target) as reranker:
            async_out = await async_rerank_search(
                client, reranker, index="small", body=BODY, query=QUERY, options=options
            )
    finally:
        await client.close()
    assert [h["_id"] for h in async_out["hits"]["hits"]] == [
        h["_id"] for h in sync_out["hits"]["hits"]
    ]
    assert async_out["rerank"]["status"] == "reranked"


def test_hits_missing_the_field_go_last(opensearch: Engine, tiny_sidecar: RunningSidecar) -> None:
    # "summary" exists on no document: "title" is the only text, and only some titles match.
    body = {"query": {"match": {"text": "files"}}, "size": 20, "_source": ["title"]}
    options = RerankOptions(fields=("summary", "title"), window=20, missing_text="last")
    with Client(tiny_sidecar.target) as reranker:
        out = rerank_search(
            sync_client(opensearch), reranker, index="small", body=body, options=options
        )
    assert out["rerank"]["missing_text"] == 0
    options = RerankOptions(fields=("summary",), window=20, missing_text="last")
    with Client(tiny_sidecar.target) as reranker:
        out = rerank_search(
            sync_client(opensearch), reranker, index="small", body=body, options=options
        )
    plain = [h["_id"] for h in first_stage(opensearch, body)]
    assert [h["_id"] for h in out["hits"]["hits"]] == plain
    # No hit has text to score: reranking is skipped, not an order of empty texts.
    assert out["rerank"]["status"] == "skipped"
    assert out["rerank"]["reason"] == "no_document_text"


def test_reranker_down_falls_back_fast(engine: Engine) -> None:
    stats = RerankStats()
    options = RerankOptions(window=10, timeout=1.0)
    started = time.monotonic()
    with Client(dead_target()) as reranker:
        out = rerank_search(
            sync_client(engine), reranker, index="small", body=BODY, options=options, stats=stats
        )
    assert time.monotonic() - started < 1.0 + 3  # the deadline plus overhead
    assert out["rerank"]["status"] == "skipped" and out["rerank"]["reason"] in (
        "unavailable",
        "deadline_exceeded",
    )
    assert [h["_id"] for h in out["hits"]["hits"]] == [h["_id"] for h in first_stage(engine, BODY)]
    assert stats.get("skipped", out["rerank"]["reason"]) == 1


def test_slow_reranker_past_deadline(opensearch: Engine, fake_sidecar: FakeSidecar) -> None:
    fake_sidecar.scorer.gate.clear()
    options = RerankOptions(window=10, timeout=0.3)
    started = time.monotonic()
    with Client(fake_sidecar.target) as reranker:
        out = rerank_search(
            sync_client(opensearch), reranker, index="small", body=BODY, options=options
        )
        assert time.monotonic() - started < 0.3 + 3  # the deadline plus overhead, not the gate
        assert out["rerank"]["reason"] == "deadline_exceeded"
        # The server frees the expired call's pairs a moment after the client gave up; until
        # then the next call would be shed (429) by the 12-pair queue rather than time out.
        scheduler = fake_sidecar.running.sidecar.scheduler
        assert scheduler is not None
        end = time.monotonic() + 10
        while scheduler.queue_pairs and time.monotonic() < end:
            time.sleep(0.01)
        with pytest.raises(RerankFailed) as raised:
            strict = RerankOptions(window=10, timeout=0.3, strict=True)
            rerank_search(
                sync_client(opensearch), reranker, index="small", body=BODY, options=strict
            )
    assert raised.value.http_status == 504


@pytest.mark.parametrize("flavour", ["opensearch", "elasticsearch"])
def test_engine_errors_pass_through(flavour: str, request: pytest.FixtureRequest) -> None:
    engine: Engine = request.getfixturevalue(flavour)
    error = opensearchpy.NotFoundError if flavour == "opensearch" else elasticsearch.NotFoundError
    with Client(dead_target()) as reranker, pytest.raises(error):
        rerank_search(sync_client(engine), reranker, index="no-such-index", body=BODY)


def test_filter_path_applies_after_reranking_and_sorts_are_refused(
    engine: Engine, tiny_sidecar: RunningSidecar
) -> None:
    body = {"query": {"match": {"text": "files"}}, "size": 5}
    options = RerankOptions(window=8)
    client = sync_client(engine)
    with Client(tiny_sidecar.target) as reranker:
        whole = rerank_search(client, reranker, index="small", body=body, options=options)
        kept = rerank_search(
            client, reranker, index="small", body=body, options=options, filter_path="hits.hits._id"
        )
        assert kept == {"hits": {"hits": [{"_id": h["_id"]} for h in whole["hits"]["hits"]]}}
        assert whole["rerank"]["status"] == "reranked"
        for refused in ({"sort": [{"title.keyword": "asc"}]}, {"scroll": "1m"}):
            with pytest.raises(ValueError, match="cannot be combined"):
                rerank_search(client, reranker, index="small", body=body, **refused)


def test_a_sidecar_restarted_with_lower_limits_is_asked_again(opensearch: Engine) -> None:
    # As the proxy does: remembered limits refused by a restarted server are asked again.
    port = free_port()
    settings = Settings(model="fake", warmup=False, max_documents=1000)
    body = {"query": {"match": {"text": "files"}}, "size": 8}
    with Client(f"127.0.0.1:{port}") as reranker:

        def search() -> dict[str, Any]:
            return rerank_search(
                sync_client(opensearch),
                reranker,
                index="small",
                body=body,
                query="files",
                options=RerankOptions(window=8),
            )

        with run_sidecar(settings, lambda _: FakeScorer(), port=port):
            assert search()["rerank"]["status"] == "reranked"
        lower = dataclasses.replace(settings, max_documents=3)
        with run_sidecar(lower, lambda _: FakeScorer(), port=port):
            for _ in range(40):  # until the channel has reconnected
                out = search()
                if out["rerank"].get("reason") != "unavailable":
                    break
                time.sleep(0.25)
    assert out["rerank"]["status"] == "reranked", out["rerank"]
    assert out["rerank"]["scored"] == 8


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_query_over_the_servers_limit_is_cut_and_reranked(
    opensearch: Engine, flavour: str
) -> None:
    settings = Settings(model="fake", warmup=False, max_query_bytes=200)
    query = "files " + "é" * 400  # 806 bytes: refused whole
    body = {"query": {"match": {"text": "files"}}, "size": 5}
    hits = first_stage(opensearch, body)
    search: dict[str, Any] = {"index": "small", "body": body, "query": query}
    search["options"] = RerankOptions(window=5)
    with run_sidecar(settings, lambda _: FakeScorer()) as running:
        if flavour == "sync":
            with Client(running.target) as reranker:
                out = rerank_search(sync_client(opensearch), reranker, **search)
        else:

            async def searched() -> dict[str, Any]:
                async with AsyncClient(running.target) as reranker:
                    client = async_client(opensearch)
                    try:
                        return await async_rerank_search(client, reranker, **search)
                    finally:
                        await client.close()

            out = asyncio.run(searched())
    assert out["rerank"]["status"] == "reranked", out["rerank"]
    sent = query.encode()[:200].decode(errors="ignore")  # whole characters, within the limit
    scores = {h["_id"]: expected_logit(sent, h["_source"]["text"]) for h in hits}
    assert [h["_id"] for h in out["hits"]["hits"]] == sorted(scores, key=lambda i: -scores[i])
