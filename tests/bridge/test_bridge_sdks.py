"""Client libraries nobody here wrote, unmodified, against the bridge (their base URL only).

Cohere's SDK (v1 ``Client`` and v2 ``ClientV2``, what LangChain's and LlamaIndex's Cohere
rerankers call), elasticsearch-py's inference API, TEI's ``tei-client`` and opensearch-py with
``http_compress=True``, each answered by the bridge in front of osmem-server and a real rerankd
with the tiny model. Expected orders and scores come from rerankd's own gRPC client.
"""

from __future__ import annotations

import gzip
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import cohere
import elasticsearch
import opensearchpy
import pytest
import tei_client
from conftest import Engine, run_bridge

from rerankd import Client
from rerankd.connection import Connection
from rerankd_bridge.proxy import ProxySettings
from support.sidecar import RunningSidecar

QUERY = "list files in a directory"
DOCS = [
    "cp copies files",
    "ls lists directory contents",
    "df reports disk space",
    "find searches a directory hierarchy",
]


@pytest.fixture(scope="module")
def bridge(opensearch: Engine, tiny_sidecar: RunningSidecar) -> Iterator[str]:
    settings = ProxySettings(engine=opensearch.url, reranker=Connection(tiny_sidecar.target))
    with run_bridge(settings) as url:
        yield url


def expected(target: str, documents: list[str] = DOCS) -> list[tuple[int, float]]:
    """(index, score) best first, from the gRPC client."""
    with Client(target) as client:
        return [(r.index, r.score) for r in client.rerank(QUERY, documents).results]


def scored(pairs: list[tuple[int, float]]) -> list[tuple[int, Any]]:
    return [(i, pytest.approx(s, rel=1e-6)) for i, s in pairs]


@pytest.fixture
def co(bridge: str) -> Iterator[cohere.Client]:
    with cohere.Client(api_key="unused", base_url=bridge) as client:
        yield client


@pytest.fixture
def co2(bridge: str) -> Iterator[cohere.ClientV2]:
    with cohere.ClientV2(api_key="unused", base_url=bridge) as client:
        yield client


def test_cohere_v1_client(co: cohere.Client, tiny_sidecar: RunningSidecar) -> None:
    out = co.rerank(
        model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=2, return_documents=True
    )
    want = expected(tiny_sidecar.target)
    assert [(r.index, r.relevance_score) for r in out.results] == scored(want[:2])
    assert [r.document.text for r in out.results if r.document] == [DOCS[i] for i, _ in want[:2]]
    with pytest.raises(cohere.BadRequestError):
        co.rerank(query=" ", documents=DOCS)


def test_cohere_v1_object_documents_and_rank_fields(
    co: cohere.Client, tiny_sidecar: RunningSidecar
) -> None:
    docs = [{"title": f"page {i}", "text": text} for i, text in enumerate(DOCS)]
    out = co.rerank(
        query=QUERY, documents=docs, rank_fields=["title", "text"], return_documents=True
    )
    texts = [f"title: {d['title']}\ntext: {d['text']}" for d in docs]
    assert [(r.index, r.relevance_score) for r in out.results] == scored(
        expected(tiny_sidecar.target, texts)
    )
    assert [r.document.model_dump() for r in out.results if r.document] == [
        docs[r.index] for r in out.results
    ]
    plain = co.rerank(query=QUERY, documents=docs)  # default rank_fields: ["text"]
    assert [r.index for r in plain.results] == [i for i, _ in expected(tiny_sidecar.target)]


def test_cohere_v2_client(co2: cohere.ClientV2, tiny_sidecar: RunningSidecar) -> None:
    out = co2.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=3)
    assert [(r.index, r.relevance_score) for r in out.results] == scored(
        expected(tiny_sidecar.target)[:3]
    )
    assert out.meta is not None and out.meta.api_version is not None
    assert out.meta.api_version.version == "2"
    with pytest.raises(cohere.BadRequestError):
        co2.rerank(model="rerank-v3.5", query=QUERY, documents=[])


@pytest.fixture
def es(bridge: str) -> Iterator[elasticsearch.Elasticsearch]:
    client = elasticsearch.Elasticsearch(bridge)  # a fresh client checks X-Elastic-Product
    yield client
    client.close()


def test_elasticsearch_client_inference(
    es: elasticsearch.Elasticsearch, tiny_sidecar: RunningSidecar
) -> None:
    want = scored(expected(tiny_sidecar.target))
    out = es.inference.rerank(inference_id="rerankd", query=QUERY, input=DOCS)
    assert [(r["index"], r["relevance_score"]) for r in out["rerank"]] == want
    # Without the task type in the path, as es.inference.inference() sends it.
    out = es.inference.inference(inference_id="rerankd", query=QUERY, input=DOCS)
    assert [(r["index"], r["relevance_score"]) for r in out["rerank"]] == want
    with pytest.raises(elasticsearch.BadRequestError):
        es.inference.rerank(inference_id="rerankd", query=" ", input=DOCS)
    # Another task (no query) is not the bridge's: it goes to the engine, which has none.
    with pytest.raises(elasticsearch.ApiError):
        es.inference.inference(inference_id="my-embeddings", input=["x"])


@pytest.fixture
def tei(bridge: str) -> Iterator[tei_client.HttpClient]:
    client = tei_client.HttpClient(bridge)
    yield client
    client.client.close()  # its async twin never connected


def test_tei_client(tei: tei_client.HttpClient, tiny_sidecar: RunningSidecar) -> None:
    assert tei.health()
    info = tei.info()
    with Client(tiny_sidecar.target) as client:
        served = client.model_info()
    assert info.server_model_type == tei_client.ModelType.Reranker
    assert (info.server_model_id, info.max_input_length) == (served.name, served.max_input_tokens)
    ranks = tei.rerank(QUERY, DOCS, return_text=True).ranks
    assert [(r.index, r.score) for r in ranks] == scored(expected(tiny_sidecar.target))
    assert [r.text for r in ranks] == [DOCS[r.index] for r in ranks]


RERANK = {"query_context": {"query_text": QUERY}, "context": {"document_fields": ["text"]}}


def test_opensearch_py_with_compression(
    bridge: str, opensearch: Engine, request: pytest.FixtureRequest
) -> None:
    """Index creation, _bulk, a plain and a reranked search, all gzip-compressed."""
    client = opensearchpy.OpenSearch(bridge, http_compress=True)
    request.addfinalizer(client.close)
    mappings = {"mappings": {"properties": {"text": {"type": "text"}}}}
    assert client.indices.create(index="compressed", body=mappings)["acknowledged"] is True
    try:
        lines = [
            json.dumps(row)
            for i, text in enumerate(DOCS)
            for row in ({"index": {"_index": "compressed", "_id": str(i)}}, {"text": text})
        ]
        assert client.bulk(body="\n".join(lines) + "\n", refresh=True)["errors"] is False
        query = {"query": {"match": {"text": "files directory"}}}
        plain = client.search(index="compressed", body=query)
        direct = opensearch.request("POST", "/compressed/_search", query)
        assert [h["_id"] for h in plain["hits"]["hits"]] == [
            h["_id"] for h in direct["hits"]["hits"]
        ]
        reranked = client.search(index="compressed", body={**query, "ext": {"rerank": RERANK}})
        assert reranked["rerank"]["status"] == "reranked"
        assert {h["_id"] for h in reranked["hits"]["hits"]} == {
            h["_id"] for h in direct["hits"]["hits"]
        }
    finally:
        client.indices.delete(index="compressed")


def test_reranked_answers_are_compressed_as_the_client_asked(bridge: str) -> None:
    body = {"query": {"match": {"text": "files"}}, "ext": {"rerank": RERANK}}
    request = urllib.request.Request(
        bridge + "/small/_search",
        data=gzip.compress(json.dumps(body).encode()),
        headers={
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept-Encoding": "gzip",
        },
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        answer = json.loads(gzip.decompress(resp.read()))
    assert answer["rerank"]["status"] == "reranked"
