"""The HTTP rerank endpoints (Cohere, Elasticsearch inference, TEI) against a real rerankd."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from conftest import JSON_SMART_DOUBLE_LIMIT, FakeSidecar, dead_target, float32, number_literals

from rerankd import Client
from rerankd.connection import Connection
from rerankd_bridge.endpoints import cohere_ask, elastic_ask, tei_ask
from rerankd_bridge.proxy import Bridge, ProxySettings
from rerankd_bridge.stats import RerankStats
from support.sidecar import RunningSidecar

QUERY = "capital of the united states"
DOCS = ["Carson City is in Nevada", "Washington is the capital", "capital punishment", "Saipan"]


async def serve(target: str) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    settings = ProxySettings(engine=None, reranker=Connection(target), port=0)
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


# --- score literals, as OpenSearch ml-commons' JSON reader meets them -------------------------


@pytest.fixture
async def tiny_api(
    tiny_sidecar: RunningSidecar,
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async for pair in serve(tiny_sidecar.target):
        yield pair


@pytest.mark.parametrize(
    ("path", "body", "name"),
    [
        ("/v1/rerank", {"query": QUERY, "documents": DOCS}, "relevance_score"),
        ("/v2/rerank", {"model": "m", "query": QUERY, "documents": DOCS}, "relevance_score"),
        ("/_inference/rerank/x", {"query": QUERY, "input": DOCS}, "relevance_score"),
        ("/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True}, "score"),
    ],
)
async def test_every_score_literal_is_a_short_float32(
    tiny_api: tuple[str, aiohttp.ClientSession],
    tiny_sidecar: RunningSidecar,
    path: str,
    body: dict[str, Any],
    name: str,
) -> None:
    """Real model scores (float32 widened to 17-digit doubles by the client) come out in their
    shortest float32 form: at most 9 significant digits and 18 characters, the same float32."""
    with Client(tiny_sidecar.target) as client:
        want = client.rerank(QUERY, DOCS, raw_scores=body.get("raw_scores", False))
    url, http = tiny_api
    async with http.post(url + path, json=body) as resp:
        assert resp.status == 200
        raw = await resp.read()
    literals = number_literals(raw, {name})
    assert len(literals) == len(DOCS)
    for literal, result in zip(literals, want.results, strict=True):
        assert float32(float(literal)) == float32(result.score)
        assert len(literal) <= JSON_SMART_DOUBLE_LIMIT
        assert len(literal.lstrip("-0.").split("e")[0].replace(".", "")) <= 9, literal


# --- real clients' mistakes, bad documents, and what is the reranker's fault -----------------


async def test_cohere_v2_and_rank_fields(
    api: tuple[str, aiohttp.ClientSession], expected: list[tuple[int, float]]
) -> None:
    docs = [{"text": d, "lang": "en"} for d in DOCS]
    status, out = await post(
        api, "/v2/rerank", {"query": QUERY, "documents": docs, "return_documents": True}
    )
    assert status == 200 and out["meta"]["api_version"] == {"version": "2"}
    assert [r["index"] for r in out["results"]] == [i for i, _ in expected]
    assert [r["document"] for r in out["results"]] == [docs[i] for i, _ in expected]
    status, out = await post(
        api, "/v2/rerank", {"query": QUERY, "documents": [{"title": "t"}], "rank_fields": ["x"]}
    )
    assert status == 400 and "rank_fields" in out["message"]


async def test_top_n_beyond_the_documents_returns_them_all(
    api: tuple[str, aiohttp.ClientSession], expected: list[tuple[int, float]]
) -> None:
    for path in ("/v1/rerank", "/v2/rerank"):
        status, out = await post(api, path, {"query": QUERY, "documents": DOCS, "top_n": 2**40})
        assert status == 200, out
        assert [r["index"] for r in out["results"]] == [i for i, _ in expected]
    status, out = await post(api, "/_inference/rerank", {"query": QUERY, "input": DOCS, "top_n": 9})
    assert status == 200 and len(out["rerank"]) == len(DOCS)


async def test_a_body_nested_too_deeply_is_a_client_error(
    api: tuple[str, aiohttp.ClientSession],
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    url, http = api
    for path, status, key in (("/v1/rerank", 400, "message"), ("/rerank", 422, "error_type")):
        async with http.post(url + path, data=deep) as resp:
            assert resp.status == status
            assert key in await resp.json()


async def test_a_lone_surrogate_or_a_huge_document_does_not_fail_the_call(
    api: tuple[str, aiohttp.ClientSession],
) -> None:
    # 680 KB, past the server's 512 KiB per-document limit: cut to what the model can read.
    huge = "directory listing " * 40_000
    docs = ["ls lists \ud83d files", huge, "cp copies"]
    body = {"query": "list \udc00 files", "documents": docs, "return_documents": True}
    status, out = await post(api, "/v1/rerank", body)
    assert status == 200, out
    assert sorted(r["index"] for r in out["results"]) == [0, 1, 2]
    # The caller's documents come back as sent, lone surrogate included.
    assert {r["index"]: r["document"]["text"] for r in out["results"]}[0] == docs[0]
    # TEI's truncate: false asks for over-long input to be refused, not cut.
    status, out = await post(api, "/rerank", {"query": "q", "texts": [huge], "truncate": False})
    assert status == 422 and out["error_type"] == "Validation"


async def test_elasticsearch_answers_carry_the_product_header(
    api: tuple[str, aiohttp.ClientSession],
) -> None:
    url, http = api
    for body, status in (({"query": QUERY, "input": DOCS}, 200), ({"query": " "}, 400)):
        async with http.post(url + "/_inference/rerank/rerankd", json=body) as resp:
            assert resp.status == status
            assert resp.headers["X-Elastic-Product"] == "Elasticsearch"
    async with http.post(url + "/_inference/rerankd", json={"query": QUERY, "input": DOCS}) as r:
        assert r.status == 200 and r.headers["X-Elastic-Product"] == "Elasticsearch"
        assert len((await r.json())["rerank"]) == len(DOCS)


async def test_compressed_requests_and_answers(api: tuple[str, aiohttp.ClientSession]) -> None:
    url, http = api
    body = gzip.compress(json.dumps({"query": QUERY, "documents": DOCS}).encode())
    headers = {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"}
    async with http.post(url + "/v1/rerank", data=body, headers=headers) as resp:
        assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
        assert len((await resp.json())["results"]) == len(DOCS)
    headers = {"Content-Encoding": "br"}
    async with http.post(url + "/v1/rerank", data=b"\x1b\x03", headers=headers) as resp:
        assert resp.status == 415 and "br" in (await resp.json())["message"]


async def test_tei_info_and_health(api: tuple[str, aiohttp.ClientSession]) -> None:
    url, http = api
    async with http.get(url + "/info") as resp:
        info = await resp.json()
    assert resp.status == 200 and info["model_id"] == "fake"
    assert info["model_type"] == {
        "reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    }
    async with http.get(url + "/health") as resp:
        assert resp.status == 200 and await resp.read() == b""


async def test_info_and_health_when_the_reranker_is_down() -> None:
    async for url, http in serve(dead_target()):
        for path in ("/info", "/health"):
            async with http.get(url + path) as resp:
                assert resp.status == 503 and "error" in await resp.json()


async def test_elasticsearch_filter_path_and_timeout_are_honoured(
    api: tuple[str, aiohttp.ClientSession],
    fake_sidecar: FakeSidecar,
    expected: list[tuple[int, float]],
) -> None:
    body = {"query": QUERY, "input": DOCS}
    status, out = await post(api, "/_inference/rerank/rerankd?filter_path=rerank.index", body)
    assert status == 200 and out == {"rerank": [{"index": i} for i, _ in expected]}
    status, out = await post(api, "/_inference/rerank/rerankd?timeout=soon", body)
    assert status == 400 and "timeout" in out["error"]["reason"]
    # Past the bridge's own 2 s deadline, within the call's 20 s.
    fake_sidecar.scorer.gate.clear()
    release = asyncio.get_running_loop().call_later(3.0, fake_sidecar.scorer.gate.set)
    try:
        status, out = await post(api, "/_inference/rerank/rerankd?timeout=20s", body)
    finally:
        release.cancel()
        fake_sidecar.scorer.gate.set()
    assert status == 200 and [r["index"] for r in out["rerank"]] == [i for i, _ in expected]
