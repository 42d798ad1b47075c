"""The HTTP rerank endpoints (Cohere, Elasticsearch inference, TEI) against a real rerankd."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from conftest import FakeSidecar, dead_target

from rerankd import Client
from rerankd_bridge.endpoints import cohere_ask, elastic_ask, tei_ask
from rerankd_bridge.proxy import Bridge, ProxySettings
from rerankd_bridge.stats import RerankStats

QUERY = "capital of the united states"
DOCS = ["Carson City is in Nevada", "Washington is the capital", "capital punishment", "Saipan"]


async def serve(target: str) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    settings = ProxySettings(engine=None, reranker=target, port=0)
    async with Bridge(settings, RerankStats()) as bridge, aiohttp.ClientSession() as http:
        yield f"http://127.0.0.1:{bridge.port}", http


@pytest.fixture
async def api(fake_sidecar: FakeSidecar) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async for pair in serve(fake_sidecar.target):
        yield pair


@pytest.fixture
def expected(fake_sidecar: FakeSidecar) -> list[tuple[int, float]]:
    """(index, score) best first, straight from the gRPC client."""
    with Client(fake_sidecar.target) as client:
        return [(r.index, r.score) for r in client.rerank(QUERY, DOCS).results]


async def post(api: tuple[str, aiohttp.ClientSession], path: str, body: Any) -> tuple[int, Any]:
    url, http = api
    async with http.post(url + path, json=body) as resp:
        return resp.status, await resp.json()


async def test_cohere_shape(
    api: tuple[str, aiohttp.ClientSession], expected: list[tuple[int, float]]
) -> None:
    # As ml-commons' Cohere blueprint sends it (a Cohere model name, which is ignored).
    body = {
        "model": "rerank-english-v2.0",
        "query": QUERY,
        "documents": DOCS,
        "top_n": 2,
        "return_documents": True,
    }
    status, out = await post(api, "/v1/rerank", body)
    assert status == 200
    assert [(r["index"], r["relevance_score"]) for r in out["results"]] == [
        (i, pytest.approx(s)) for i, s in expected[:2]
    ]
    assert out["results"][0]["document"] == {"text": DOCS[expected[0][0]]}
    assert out["meta"]["api_version"] == {"version": "1"} and out["id"]


async def test_elasticsearch_inference_shape(
    api: tuple[str, aiohttp.ClientSession], expected: list[tuple[int, float]]
) -> None:
    body = {"query": QUERY, "input": DOCS, "task_settings": {"return_documents": True}}
    status, out = await post(api, "/_inference/rerank/rerankd", body)
    assert status == 200
    assert [(r["index"], r["relevance_score"]) for r in out["rerank"]] == [
        (i, pytest.approx(s)) for i, s in expected
    ]
    assert all(r["text"] == DOCS[r["index"]] for r in out["rerank"])


async def test_tei_shape(
    api: tuple[str, aiohttp.ClientSession], expected: list[tuple[int, float]]
) -> None:
    status, out = await post(api, "/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True})
    assert status == 200
    assert [(r["index"], r["score"]) for r in out] == [(i, pytest.approx(s)) for i, s in expected]
    assert all("text" not in r for r in out)


@pytest.mark.parametrize(
    ("path", "body", "status", "check"),
    [
        ("/v1/rerank", {"query": " ", "documents": ["a"]}, 400, "message"),
        ("/v1/rerank", {"query": "q", "documents": []}, 400, "message"),
        ("/_inference/rerank", {"query": "q"}, 400, "error"),
        ("/rerank", {"query": "q", "texts": "a"}, 422, "error_type"),
        ("/rerank", [1, 2], 422, "error"),
    ],
)
async def test_bad_requests_use_each_error_shape(
    api: tuple[str, aiohttp.ClientSession], path: str, body: Any, status: int, check: str
) -> None:
    got, out = await post(api, path, body)
    assert got == status and check in out


async def test_reranker_down_is_503() -> None:
    async for api in serve(dead_target()):
        status, out = await post(api, "/v1/rerank", {"query": "q", "documents": ["a"]})
        assert status in (503, 504) and "message" in out


def test_dialects_read_requests() -> None:
    assert cohere_ask({"query": "q", "documents": [{"text": "a"}, "b"]}).documents == ["a", "b"]
    assert elastic_ask({"query": "q", "input": "a", "top_n": 1}).top_n == 1
    assert tei_ask({"query": "q", "texts": ["a"], "truncate": False}).truncation == "none"
    left = tei_ask({"query": "q", "texts": ["a"], "truncate": True, "truncation_direction": "Left"})
    assert left.truncation == "start"
    assert tei_ask({"query": "q", "texts": ["a"]}).truncation == "default"
