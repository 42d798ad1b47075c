"""End to end with the trained man-page cross-encoder: reranking through the proxy beats BM25.

Indexes the man-page corpus of ``../shared`` in osmem-server, sends held-out test queries
through the bridge with and without ``ext.rerank``, and compares NDCG@10 (one relevant page
per query). Offline, the same model takes BM25's top 30 from about 0.58 to about 0.78.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Engine, osmem

from rerankd.connection import Connection
from rerankd_bridge.proxy import Bridge, ProxySettings
from rerankd_bridge.ranking import RerankOptions
from rerankd_bridge.spec import BridgeConfig, RerankSpec
from rerankd_bridge.stats import RerankStats
from rerankd_server.settings import Settings
from support.sidecar import RunningSidecar, run_sidecar

pytestmark = pytest.mark.slow

N_QUERIES = 12
WINDOW = 30


def ndcg_at_10(ranked_ids: list[str], relevant: str) -> float:
    """NDCG@10 with one relevant document (the ideal DCG is 1)."""
    for rank, doc_id in enumerate(ranked_ids[:10]):
        if doc_id == relevant:
            return 1.0 / math.log2(rank + 2)
    return 0.0


@pytest.fixture(scope="module")
def manpages(shared_dir: Path) -> Iterator[tuple[Engine, list[dict[str, Any]]]]:
    data = shared_dir / "data" / "manpages"
    corpus = {}
    with (data / "corpus.jsonl").open() as lines:
        for line in lines:
            doc = json.loads(line)
            corpus[doc["id"]] = doc["text"]
    with (data / "queries.jsonl").open() as lines:
        queries = [q for q in map(json.loads, lines) if q["split"] == "test"][:N_QUERIES]
    # Index the pages these queries' BM25 top 30 come from, plus their answers: a corpus of a
    # few hundred pages keeps the test quick while each query still competes with its
    # strongest lexical distractors.
    candidates = json.loads((data / "bm25_test_top30.json").read_text())
    keep = {q["doc_id"] for q in queries}
    for q in queries:
        keep.update(doc_id for doc_id, _ in candidates.get(q["qid"], []))
    corpus = {doc_id: text for doc_id, text in corpus.items() if doc_id in keep}
    with osmem("manpages", corpus) as engine:
        yield engine, queries


@pytest.fixture(scope="module")
def trained_sidecar(shared_dir: Path) -> Iterator[RunningSidecar]:
    model = shared_dir / "models" / "manpages-minilm-l6-ce"
    if not model.is_dir():
        pytest.skip(f"{model} is absent")
    with run_sidecar(Settings(model=str(model), device="cpu")) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_reranking_through_the_proxy_improves_ndcg(
    manpages: tuple[Engine, list[dict[str, Any]]],
    trained_sidecar: RunningSidecar,
    http: aiohttp.ClientSession,
) -> None:
    engine, queries = manpages
    config = BridgeConfig(RerankSpec(RerankOptions(timeout=60)))
    settings = ProxySettings(
        engine=engine.url, reranker=Connection(trained_sidecar.target), port=0, config=config
    )
    stats = RerankStats()
    before, after = [], []
    async with Bridge(settings, stats) as bridge:
        url = f"http://127.0.0.1:{bridge.port}/manpages/_search"
        for q in queries:
            body: dict[str, Any] = {"query": {"match": {"text": q["query"]}}, "size": 10}
            async with http.post(url, json=body) as resp:
                plain = await resp.json()
            rerank = {"query_context": {"query_text_path": "query.match.text"}, "window": WINDOW}
            async with http.post(url, json={**body, "ext": {"rerank": rerank}}) as resp:
                reranked = await resp.json()
            assert reranked["rerank"]["status"] == "reranked", reranked["rerank"]
            before.append(ndcg_at_10([h["_id"] for h in plain["hits"]["hits"]], q["doc_id"]))
            after.append(ndcg_at_10([h["_id"] for h in reranked["hits"]["hits"]], q["doc_id"]))
    bm25, ce = sum(before) / len(before), sum(after) / len(after)
    print(f"NDCG@10 over {len(queries)} test queries: BM25 {bm25:.3f} -> reranked {ce:.3f}")
    assert ce > bm25 + 0.05
    assert stats.get("reranked") == len(queries)
