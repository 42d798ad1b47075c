"""The HTTP proxy against real engines and rerankd: pass-through, reranking, failure, paging."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import (
    JSON_SMART_DOUBLE_LIMIT,
    SMALL_CORPUS,
    Engine,
    FakeSidecar,
    dead_target,
    number_literals,
)

from rerankd.connection import Connection
from rerankd_bridge.proxy import Bridge, ProxySettings, main
from rerankd_bridge.ranking import RerankOptions
from rerankd_bridge.spec import BridgeConfig, RerankSpec
from rerankd_bridge.stats import RerankStats
from rerankd_bridge.wire import float32_text
from rerankd_server.process import free_port
from rerankd_server.settings import Settings
from support.fake_scorer import FakeScorer
from support.sidecar import RunningSidecar, run_sidecar

QUERY = "list files in a directory"
RERANK = {
    "query_context": {"query_text": QUERY},
    "context": {"document_fields": ["text"]},
    "window": 8,
}


class Proxy:
    """A started Bridge and an HTTP session pointed at it."""

    def __init__(self, bridge: Bridge, http: aiohttp.ClientSession) -> None:
        self.bridge = bridge
        self.http = http
        self.url = f"http://127.0.0.1:{bridge.port}"

    async def call(
        self, method: str, path: str, body: Any = None, **kwargs: Any
    ) -> tuple[int, Any]:
        data = body if isinstance(body, str | bytes | None) else json.dumps(body)
        headers = {"Content-Type": "application/json"}
        async with self.http.request(
            method, self.url + path, data=data, headers=headers, **kwargs
        ) as resp:
            raw = await resp.read()
            return resp.status, json.loads(raw) if raw else None


async def start_proxy(
    engine: Engine | None,
    reranker: str,
    config: BridgeConfig | None = None,
    stats: RerankStats | None = None,
) -> AsyncIterator[Proxy]:
    settings = ProxySettings(
        engine=engine.url if engine else None,
        reranker=Connection(reranker),
        port=0,
        config=config or BridgeConfig(),
    )
    async with Bridge(settings, stats or RerankStats()) as bridge, aiohttp.ClientSession() as http:
        yield Proxy(bridge, http)


@pytest.fixture
async def proxy(engine: Engine, tiny_sidecar: RunningSidecar) -> AsyncIterator[Proxy]:
    async for p in start_proxy(engine, tiny_sidecar.target):
        yield p


def ids(body: dict[str, Any]) -> list[str]:
    return [h["_id"] for h in body["hits"]["hits"]]


async def test_passes_other_requests_through(proxy: Proxy, engine: Engine) -> None:
    status, created = await proxy.call(
        "PUT", "/scratch", {"mappings": {"properties": {"text": {"type": "text"}}}}
    )
    assert status == 200 and created["acknowledged"] is True
    status, _ = await proxy.call("PUT", "/scratch/_doc/a?refresh=true", {"text": "hello"})
    assert status in (200, 201)
    status, doc = await proxy.call("GET", "/scratch/_doc/a")
    assert status == 200 and doc["_source"] == {"text": "hello"}
    status, count = await proxy.call("GET", "/small/_count?q=text:files")
    assert (
        status == 200
        and count["count"] == engine.request("GET", "/small/_count?q=text:files")["count"]
    )
    status, missing = await proxy.call("GET", "/no-such-index/_doc/1")
    assert status == 404 and "error" in missing
    status, _ = await proxy.call("DELETE", "/scratch")
    assert status == 200


async def test_search_without_rerank_is_untouched(proxy: Proxy, engine: Engine) -> None:
    body = {"query": {"match": {"text": "files"}}, "size": 4}
    status, out = await proxy.call("POST", "/small/_search", body)
    assert status == 200 and "rerank" not in out
    assert ids(out) == ids(engine.request("POST", "/small/_search", body))


async def test_ext_rerank_reranks_and_is_stripped(proxy: Proxy, engine: Engine) -> None:
    body = {"query": {"match": {"text": QUERY}}, "size": 5, "ext": {"rerank": RERANK}}
    async with proxy.http.post(proxy.url + "/small/_search", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["X-Rerankd-Rerank"] == "reranked"
        out = await resp.json()
    assert out["rerank"]["status"] == "reranked" and out["rerank"]["window"] == 8
    scores = [h["_score"] for h in out["hits"]["hits"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    window = ids(engine.request("POST", "/small/_search", {"query": body["query"], "size": 8}))
    assert set(ids(out)) <= set(window)


async def test_reranked_scores_are_written_as_short_float32(proxy: Proxy) -> None:
    body = {"query": {"match": {"text": QUERY}}, "size": 5, "ext": {"rerank": RERANK}}
    async with proxy.http.post(proxy.url + "/small/_search", json=body) as resp:
        raw = await resp.read()
    literals = number_literals(raw, {"_score", "max_score"})
    assert len(literals) == 5 + 1
    for literal in literals:
        assert len(literal) <= JSON_SMART_DOUBLE_LIMIT
        assert float32_text(float(literal)) == literal  # the shortest float32 form


async def test_paging_through_the_proxy_is_consistent(proxy: Proxy, engine: Engine) -> None:
    query = {"bool": {"should": [{"match": {"text": "files"}}, {"match": {"text": "directories"}}]}}
    rerank = {**RERANK, "window": 5}
    everything = engine.request("POST", "/small/_search", {"query": query, "size": 50})
    seen = []
    for from_ in range(0, 15, 3):
        status, out = await proxy.call(
            "POST",
            f"/small/_search?size=3&from={from_}",
            {"query": query, "ext": {"rerank": rerank}},
        )
        assert status == 200
        seen += ids(out)
    assert sorted(seen) == sorted(ids(everything)) and len(seen) == len(set(seen))
    assert seen[5:] == ids(everything)[5:]


async def test_per_index_config_turns_reranking_on(
    engine: Engine, tiny_sidecar: RunningSidecar
) -> None:
    config = BridgeConfig(indices=(("sm*", RerankSpec(RerankOptions(window=6))),))
    async for proxy in start_proxy(engine, tiny_sidecar.target, config):
        status, out = await proxy.call(
            "POST", "/small/_search", {"query": {"match": {"text": QUERY}}}
        )
        assert status == 200 and out["rerank"]["status"] == "reranked"
        status, out = await proxy.call("POST", "/_search", {"query": {"match": {"text": QUERY}}})
        assert status == 200 and "rerank" not in out


async def test_msearch_reranks_only_the_items_that_ask(proxy: Proxy) -> None:
    query = {"query": {"match": {"text": QUERY}}, "size": 3}
    lines = [{"index": "small"}, {**query, "ext": {"rerank": RERANK}}, {"index": "small"}, query]
    ndjson = "\n".join(json.dumps(line) for line in lines) + "\n"
    status, out = await proxy.call("POST", "/_msearch", ndjson)
    assert status == 200
    first, second = out["responses"]
    assert first["rerank"]["status"] == "reranked" and len(first["hits"]["hits"]) == 3
    assert "rerank" not in second


async def test_engine_errors_pass_through_with_status(proxy: Proxy) -> None:
    status, out = await proxy.call("POST", "/no-such-index/_search", {"ext": {"rerank": RERANK}})
    assert status == 404 and "error" in out


async def test_bad_ext_rerank_is_a_400(proxy: Proxy) -> None:
    status, out = await proxy.call("POST", "/small/_search", {"ext": {"rerank": {"windw": 3}}})
    assert status == 400 and "windw" in out["error"]["reason"]


async def test_reranker_stopped_mid_test(engine: Engine) -> None:
    stats = RerankStats()
    body = {
        "query": {"match": {"text": QUERY}},
        "size": 4,
        "ext": {"rerank": {**RERANK, "timeout_ms": 1000}},
    }
    with run_sidecar(Settings(model="fake", warmup=False), lambda _: FakeScorer()) as running:
        async for proxy in start_proxy(engine, running.target, stats=stats):
            status, out = await proxy.call("POST", "/small/_search", body)
            assert status == 200 and out["rerank"]["status"] == "reranked"
            running_target = running.target
    async for proxy in start_proxy(engine, running_target, stats=stats):
        started = time.monotonic()
        status, out = await proxy.call("POST", "/small/_search", body)
        assert time.monotonic() - started < 1.0 + 3  # the deadline plus overhead
        assert status == 200 and out["rerank"]["status"] == "skipped"
        plain = {"query": body["query"], "size": 4}
        assert ids(out) == ids(engine.request("POST", "/small/_search", plain))
        strict = {**body, "ext": {"rerank": {**RERANK, "timeout_ms": 1000, "strict": True}}}
        status, out = await proxy.call("POST", "/small/_search", strict)
        assert status in (503, 504) and out["error"]["type"] == "rerank_exception"
        async with proxy.http.get(proxy.url + "/_rerankd/metrics") as resp:
            text = await resp.text()
        assert 'status="reranked",reason=""} 1' in text
        assert 'status="skipped"' in text


async def test_overloaded_reranker_falls_back(
    opensearch: Engine, fake_sidecar: FakeSidecar
) -> None:
    fake_sidecar.scorer.gate.clear()
    rerank = {**RERANK, "window": 40, "timeout_ms": 10_000}
    body = {"query": {"match": {"text": "files"}}, "size": 12, "ext": {"rerank": rerank}}
    async for proxy in start_proxy(opensearch, fake_sidecar.target):
        # The sidecar admits 12 pairs; while the model holds the first call's 10, a second
        # call's 10 cannot be admitted.
        held = asyncio.create_task(proxy.call("POST", "/small/_search", body))
        await asyncio.to_thread(fake_sidecar.scorer.entered.wait, 10)
        status, out = await proxy.call("POST", "/small/_search", body)
        assert status == 200
        assert (out["rerank"]["status"], out["rerank"]["reason"]) == (
            "skipped",
            "resource_exhausted",
        )
        fake_sidecar.scorer.gate.set()
        status, out = await held
        assert status == 200 and out["rerank"]["status"] == "reranked"


def test_cli_rejects_bad_listen(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--listen", "nowhere"])
    assert raised.value.code == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_cli_rejects_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bridge.json"
    config.write_text(json.dumps({"indices": {"x": {"window": -1}}}))
    with pytest.raises(SystemExit):
        main(
            ["--config", str(config), "--engine", "http://127.0.0.1:1", "--reranker", dead_target()]
        )
    assert "window" in capsys.readouterr().err


def test_small_corpus_is_indexed_whole(engine: Engine) -> None:
    assert engine.request("GET", "/small/_count")["count"] == len(SMALL_CORPUS)


# --- compressed traffic ------------------------------------------------------------------------


async def test_gzip_bodies_pass_through_and_reranked_answers_are_gzipped(proxy: Proxy) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    mapping = gzip.compress(b'{"mappings": {"properties": {"text": {"type": "text"}}}}')
    async with proxy.http.put(proxy.url + "/zipped", data=mapping, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    try:
        bulk = "\n".join(
            json.dumps(line)
            for i, text in enumerate(["ls lists files", "cp copies files", "mkdir"])
            for line in ({"index": {"_index": "zipped", "_id": str(i)}}, {"text": text})
        )
        ndjson = {**headers, "Content-Type": "application/x-ndjson"}
        data = gzip.compress((bulk + "\n").encode())
        async with proxy.http.post(
            proxy.url + "/_bulk?refresh=true", data=data, headers=ndjson
        ) as resp:
            assert resp.status == 200 and (await resp.json())["errors"] is False
        search = {"query": {"match": {"text": "files"}}, "ext": {"rerank": RERANK}}
        body = gzip.compress(json.dumps(search).encode())
        asks = {**headers, "Accept-Encoding": "gzip"}
        # aiohttp's client inflates the answer itself; the header says how it travelled.
        async with proxy.http.post(proxy.url + "/zipped/_search", data=body, headers=asks) as r:
            assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
            out = await r.json()
        assert out["rerank"]["status"] == "reranked" and sorted(ids(out)) == ["0", "1"]
    finally:
        await proxy.call("DELETE", "/zipped")


async def test_a_compression_bomb_is_refused(proxy: Proxy) -> None:
    bomb = gzip.compress(b" " * (2 << 20))
    settings = proxy.bridge.settings
    proxy.bridge.settings = dataclasses.replace(settings, max_body_bytes=1 << 20)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with proxy.http.post(proxy.url + "/small/_search", data=bomb, headers=headers) as r:
        assert r.status == 413 and "exceeds" in (await r.json())["error"]["reason"]


# --- documents the engine returns that a reranker cannot take as they are -----------------------


async def index_docs(engine: Engine, index: str, docs: dict[str, str]) -> None:
    await asyncio.to_thread(engine.index_corpus, index, docs)


async def test_a_lone_surrogate_in_an_indexed_text_does_not_break_reranking(
    opensearch: Engine, tiny_sidecar: RunningSidecar
) -> None:
    """osmem-server stores it as OpenSearch does (noida-db refuses such a document)."""
    docs = {"bad": "files \ud83d listed", "good": "ls lists files"}
    await index_docs(opensearch, "surrogate", docs)
    try:
        body = {"query": {"match": {"text": "files"}}, "ext": {"rerank": RERANK}}
        async for proxy in start_proxy(opensearch, tiny_sidecar.target):
            status, out = await proxy.call("POST", "/surrogate/_search", body)
        assert status == 200 and out["rerank"]["status"] == "reranked"
        assert sorted(ids(out)) == ["bad", "good"]
        # The hits come back as the engine sent them.
        assert {h["_id"]: h["_source"]["text"] for h in out["hits"]["hits"]} == docs
    finally:
        await asyncio.to_thread(opensearch.request, "DELETE", "/surrogate")


@pytest.mark.parametrize(
    ("count", "size"),
    [(1, 680_000), (40, 252_000)],  # past the per-document limit; past the message limit
    ids=["one-680KB", "forty-252KB"],
)
async def test_huge_documents_are_cut_to_what_the_model_reads(
    opensearch: Engine, tiny_sidecar: RunningSidecar, count: int, size: int
) -> None:
    docs = {f"big{i}": f"files {i} " + "listing of directory " * (size // 21) for i in range(count)}
    docs["small"] = "ls lists files"
    await index_docs(opensearch, "huge", docs)
    try:
        body = {
            "query": {"match": {"text": "files"}},
            "size": count + 1,
            "ext": {
                "rerank": {**RERANK, "window": count + 1, "strict": True, "timeout_ms": 60_000}
            },
        }
        async for proxy in start_proxy(opensearch, tiny_sidecar.target):
            status, out = await proxy.call("POST", "/huge/_search", body)
        assert status == 200, out
        assert out["rerank"]["status"] == "reranked" and out["rerank"]["scored"] == count + 1
        assert sorted(ids(out)) == sorted(docs)
    finally:
        await asyncio.to_thread(opensearch.request, "DELETE", "/huge")


# --- statuses: client mistakes 400, engine faults 502 -------------------------------------------


async def test_a_body_nested_too_deeply_is_not_a_bridge_failure(proxy: Proxy) -> None:
    """Not JSON the bridge can read: the engine answers it as it would without the bridge."""
    deep = "[" * 100_000 + "]" * 100_000
    status, _ = await proxy.call("POST", "/small/_search", deep)
    assert 400 <= status < 500


async def test_an_msearch_header_with_a_bad_index_is_a_400(proxy: Proxy) -> None:
    lines = [{"index": ["small", 5]}, {"query": {"match_all": {}}, "ext": {"rerank": RERANK}}]
    ndjson = "\n".join(json.dumps(line) for line in lines) + "\n"
    status, out = await proxy.call("POST", "/_msearch", ndjson)
    assert status == 400 and out["error"]["type"] == "illegal_argument_exception"
    assert "index" in out["error"]["reason"]


@pytest.mark.parametrize("timeout_ms", ["1e13", "10000000000000", "600001", "0", "-5", "1e400"])
async def test_absurd_timeouts_are_a_400(proxy: Proxy, timeout_ms: str) -> None:
    """Past gRPC's deadline arithmetic, 1e13 used to end every search at once, skipped."""
    rerank = '{"timeout_ms": ' + timeout_ms + "}"  # the literal as a client writes it
    body = '{"query": {"match": {"text": "files"}}, "ext": {"rerank": ' + rerank + "}}"
    status, out = await proxy.call("POST", "/small/_search", body)
    assert status == 400 and "timeout" in out["error"]["reason"]


async def test_the_longest_timeout_allowed_still_reranks(proxy: Proxy) -> None:
    body = {"query": {"match": {"text": "files"}}, "ext": {"rerank": {"timeout_ms": 600_000}}}
    status, out = await proxy.call("POST", "/small/_search", body)
    assert status == 200 and out["rerank"]["status"] == "reranked"


def test_cli_rejects_an_absurd_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--timeout-ms", str(10**13)])
    assert raised.value.code == 2 and "600" in capsys.readouterr().err


class BadEngine:
    """An engine that answers every request 200 with ``body`` (what a broken one may do)."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=self.body, content_type=self.content_type)


@asynccontextmanager
async def bad_engine(body: bytes, content_type: str) -> AsyncIterator[Engine]:
    """A real HTTP server on loopback that answers every request 200 with ``body``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", BadEngine(body, content_type).handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Engine("opensearch", f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
        (b"[1, 2, 3]", "application/json"),
        (b'{"hits": {"hits": [1, 2]}}', "application/json"),
        (b'{"hits": {"hits": {"0": {}}}}', "application/json"),
        (b'{"hits": []}', "application/json"),
    ],
    ids=["html", "array", "hits-not-objects", "hits-an-object", "hits-a-list"],
)
async def test_an_engine_answering_nonsense_is_a_502(
    fake_sidecar: FakeSidecar, body: bytes, content_type: str
) -> None:
    async with bad_engine(body, content_type) as engine:
        async for proxy in start_proxy(engine, fake_sidecar.target):
            search = {"query": {"match": {"text": "files"}}, "ext": {"rerank": RERANK}}
            status, out = await proxy.call("POST", "/small/_search", search)
            assert status == 502 and out["error"]["type"] == "engine_response_exception"
            msearch = "\n".join(json.dumps(line) for line in ({}, search)) + "\n"
            status, out = await proxy.call("POST", "/small/_msearch", msearch)
            assert status == 502 and out["error"]["type"] == "engine_response_exception"


async def test_one_nonsense_msearch_item_is_a_502_item(fake_sidecar: FakeSidecar) -> None:
    answer = {"responses": [{"hits": {"hits": ["not a hit"]}}, {"hits": {"hits": []}}]}
    async with bad_engine(json.dumps(answer).encode(), "application/json") as engine:
        async for proxy in start_proxy(engine, fake_sidecar.target):
            search = {"query": {"match": {"text": "files"}}, "ext": {"rerank": RERANK}}
            lines = [{}, search, {}, search]
            msearch = "\n".join(json.dumps(line) for line in lines) + "\n"
            status, out = await proxy.call("POST", "/_msearch", msearch)
    assert status == 200
    bad, good = out["responses"]
    assert bad["status"] == 502 and bad["error"]["type"] == "engine_response_exception"
    assert good["rerank"]["status"] == "reranked" and good["hits"]["hits"] == []


async def direct(proxy: Proxy, engine: Engine, path: str, body: Any) -> tuple[int, Any]:
    """The engine's own answer to a search, through the same HTTP session."""
    async with proxy.http.post(engine.url + path, json=body) as resp:
        return resp.status, await resp.json()


async def test_filter_path_is_applied_to_the_reranked_answer(proxy: Proxy, engine: Engine) -> None:
    # Sent on, it would strip the texts from the hits the bridge must score.
    body = {"query": {"match": {"text": QUERY}}, "size": 5, "ext": {"rerank": RERANK}}
    status, whole = await proxy.call("POST", "/small/_search", body)
    assert status == 200 and whole["rerank"]["status"] == "reranked"
    path = "/small/_search?filter_path=hits.hits._id,hits.hits._score"
    async with proxy.http.post(proxy.url + path, json=body) as resp:
        assert resp.status == 200 and resp.headers["X-Rerankd-Rerank"] == "reranked"
        filtered = await resp.json()
    hits = [{"_id": h["_id"], "_score": h["_score"]} for h in whole["hits"]["hits"]]
    assert filtered == {"hits": {"hits": hits}}
    plain = {k: v for k, v in body.items() if k != "ext"}
    _, engine_filtered = await direct(proxy, engine, path, plain)
    assert {key for h in engine_filtered["hits"]["hits"] for key in h} == {"_id", "_score"}
    status, out = await proxy.call(
        "POST", "/small/_search?filter_path=-hits.hits._source,-rerank", body
    )
    assert status == 200 and ids(out) == ids(whole) and "rerank" not in out
    assert all("_source" not in h for h in out["hits"]["hits"])


async def test_config_reranking_leaves_sorted_and_scrolled_searches_to_the_engine(
    engine: Engine, tiny_sidecar: RunningSidecar
) -> None:
    # Their pages follow the engine's order: reranking would skip and repeat hits.
    config = BridgeConfig(indices=(("small", RerankSpec(RerankOptions(window=6))),))
    query = {"match": {"text": "files"}}
    ranked = [{"standard": {"query": query}}, {"standard": {"query": {"match": {"text": "dir"}}}}]
    rrf = {"retrievers": ranked, "rank_window_size": 5}
    searches = [
        ("/small/_search", {"query": query, "size": 3, "sort": [{"title.keyword": "asc"}]}),
        ("/small/_search", {"query": query, "size": 3, "sort": "title.keyword:desc"}),
        ("/small/_search", {"query": query, "size": 2, "search_after": [0.5, "cp"]}),
        ("/small/_search?scroll=1m", {"query": query, "size": 3}),
        # Ranked in the engine within its rank_window_size, which a widened size would break.
        ("/small/_search", {"retriever": {"rrf": rrf}, "size": 3}),
        ("/small/_search", {"query": query, "size": 3, "rank": {"rrf": {}}}),
    ]
    async for proxy in start_proxy(engine, tiny_sidecar.target, config):
        for path, body in searches:
            status, out = await proxy.call("POST", path, body)
            expected_status, expected = await direct(proxy, engine, path, body)
            assert status == expected_status and "rerank" not in out, (path, body)
            if status == 200:
                assert ids(out) == ids(expected)
        by_score = {"query": query, "size": 3, "sort": ["_score", {"_score": "desc"}]}
        status, out = await proxy.call("POST", "/small/_search", by_score)
        assert status == 200 and out["rerank"]["status"] == "reranked"


@pytest.mark.parametrize(
    ("path", "extra", "named"),
    [
        ("/small/_search", {"sort": [{"title.keyword": "asc"}]}, "sort"),
        ("/small/_search", {"sort": [{"_score": "asc"}]}, "sort"),
        ("/small/_search", {"search_after": [1.0]}, "search_after"),
        ("/small/_search?scroll=1m", {}, "scroll"),
        ("/small/_search", {"retriever": {"standard": {"query": {"match_all": {}}}}}, "retriever"),
        ("/small/_search", {"rank": {"rrf": {}}}, "rank"),
    ],
)
async def test_ext_rerank_with_a_sort_or_cursor_is_a_400(
    proxy: Proxy, path: str, extra: dict[str, Any], named: str
) -> None:
    body = {"query": {"match": {"text": QUERY}}, "ext": {"rerank": RERANK}, **extra}
    status, out = await proxy.call("POST", path, body)
    assert status == 400 and named in out["error"]["reason"]
    msearch = "\n".join(json.dumps(line) for line in ({}, body)) + "\n"
    if named != "scroll":
        status, out = await proxy.call("POST", "/small/_msearch", msearch)
        assert status == 400 and named in out["error"]["reason"]


async def test_a_window_above_the_servers_document_limit_is_split(engine: Engine) -> None:
    # A cross-encoder scores each pair alone: split requests give the same ranking.
    body = {"query": {"match": {"text": "files"}}, "size": 10, "ext": {"rerank": RERANK}}
    answers = []
    for limit in (1000, 3):
        settings = Settings(model="fake", warmup=False, max_documents=limit)
        with run_sidecar(settings, lambda _: FakeScorer()) as running:
            async for proxy in start_proxy(engine, running.target):
                status, out = await proxy.call("POST", "/small/_search", body)
                assert status == 200 and out["rerank"]["status"] == "reranked"
                assert out["rerank"]["scored"] == RERANK["window"]
                answers.append([(h["_id"], h["_score"]) for h in out["hits"]["hits"]])
    assert answers[0] == answers[1]


async def test_identical_texts_score_alike_and_keep_first_stage_order(
    tiny_sidecar: RunningSidecar,
) -> None:
    # Batched float arithmetic can score copies of one text a few ulps apart; each distinct
    # text is sent once, so copies tie and keep their first-stage order.
    same = "the same text about files"
    hits = [{"_id": f"d{i}", "_score": 10.0 - i, "_source": {"text": same}} for i in range(6)]
    hits.insert(2, {"_id": "other", "_score": 9.5, "_source": {"text": "mkdir makes dirs"}})
    answer = {"hits": {"total": {"value": 7, "relation": "eq"}, "hits": hits}}
    async with bad_engine(json.dumps(answer).encode(), "application/json") as engine:
        async for proxy in start_proxy(engine, tiny_sidecar.target):
            search = {"query": {"match": {"text": "files"}}, "ext": {"rerank": RERANK}}
            status, out = await proxy.call("POST", "/small/_search", search)
    assert status == 200 and out["rerank"]["status"] == "reranked"
    copies = [h for h in out["hits"]["hits"] if h["_id"] != "other"]
    assert [h["_id"] for h in copies] == [f"d{i}" for i in range(6)]
    assert len({h["_score"] for h in copies}) == 1


async def test_engine_numbers_come_back_as_the_engine_wrote_them(
    fake_sidecar: FakeSidecar,
) -> None:
    source = b'{"text": "files", "n": 1.50, "e": 1E+2, "big": 1e400, "tiny": 1e-400}'
    answer = b'{"hits": {"max_score": 2.50, "hits": [{"_id": "a", "_score": 2.50, "_source": '
    answer += source + b"}]}}"
    async with bad_engine(answer, "application/json") as engine:
        async for proxy in start_proxy(engine, fake_sidecar.target):
            search = {"query": {"match": {"text": "files"}}, "ext": {"rerank": RERANK}}
            async with proxy.http.post(proxy.url + "/small/_search", json=search) as resp:
                raw = await resp.read()
                assert resp.status == 200
    assert source.replace(b": ", b":").replace(b", ", b",") in raw
    assert b'"_first_stage_score":[2.50]' in raw


async def test_strict_mistakes_are_4xx_not_retried_5xx(proxy: Proxy) -> None:
    # opensearch-py and elastic-transport retry 502-504; a wrong model name is not transient.
    rerank = {**RERANK, "strict": True, "model": "no-such-model"}
    body = {"query": {"match": {"text": QUERY}}, "ext": {"rerank": rerank}}
    status, out = await proxy.call("POST", "/small/_search", body)
    assert status == 404 and out["error"]["type"] == "rerank_exception"
    assert "not_found" in out["error"]["reason"]


async def test_a_bridge_fault_is_an_engine_shaped_500(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("rerankd_bridge.proxy.rerank_async", broken)
    body = {"query": {"match": {"text": QUERY}}, "ext": {"rerank": RERANK}}
    status, out = await proxy.call("POST", "/small/_search", body)
    assert status == 500 and out["error"]["type"] == "rerank_bridge_exception"


@pytest.mark.parametrize("where", ["query string", "body"])
async def test_a_search_naming_an_engine_pipeline_is_the_engines(
    proxy: Proxy, engine: Engine, where: str
) -> None:
    # OpenSearch's own rerank processor reads ext.rerank: the bridge must not take it away.
    body: dict[str, Any] = {"query": {"match": {"text": QUERY}}, "ext": {"rerank": RERANK}}
    path = "/small/_search"
    if where == "body":
        body["search_pipeline"] = {"response_processors": []}
    else:
        path += "?search_pipeline=reranking"
    status, out = await proxy.call("POST", path, body)
    expected_status, expected = await direct(proxy, engine, path, body)
    assert status == expected_status and "rerank" not in out
    if status == 200:
        assert ids(out) == ids(expected)
    status, out = await proxy.call("POST", "/small/_search?search_pipeline=_none", body)
    if where == "query string":  # _none: no pipeline, so the bridge reranks
        assert status == 200 and out["rerank"]["status"] == "reranked"


async def test_an_msearch_naming_an_engine_pipeline_is_the_engines(
    proxy: Proxy, engine: Engine
) -> None:
    # As for _search: the engine answers it as it would (an engine without pipelines refuses).
    query = {"query": {"match": {"text": QUERY}}, "size": 3, "ext": {"rerank": RERANK}}
    piped = {**query, "search_pipeline": {"response_processors": []}}
    for path, items in (("/_msearch?search_pipeline=reranking", [query]), ("/_msearch", [piped])):
        ndjson = "".join(json.dumps(line) + "\n" for item in items for line in ({}, item))
        headers = {"Content-Type": "application/x-ndjson"}
        async with proxy.http.post(engine.url + path, data=ndjson, headers=headers) as resp:
            expected = resp.status
        status, out = await proxy.call("POST", path, ndjson)
        assert status == expected, path
        if status == 200:
            assert all("rerank" not in item for item in out["responses"])


async def test_a_request_expecting_100_continue_is_answered(proxy: Proxy, engine: Engine) -> None:
    # curl sends Expect for bodies over 1 MiB; the bridge holds the whole body by then, and
    # an engine session told to wait for a 100 would wait for ever.
    body = {"query": {"match": {"text": QUERY}}, "size": 3, "ext": {"rerank": RERANK}}
    timeout = aiohttp.ClientTimeout(total=30)
    for path, sent in (("/small/_search", body), ("/small/_count", {"query": body["query"]})):
        async with proxy.http.post(
            proxy.url + path, json=sent, expect100=True, timeout=timeout
        ) as resp:
            assert resp.status == 200, path
            out = await resp.json()
        assert "count" in out or out["rerank"]["status"] == "reranked"


async def test_config_reranks_searches_without_a_body_and_with_it_in_the_query_string(
    engine: Engine, tiny_sidecar: RunningSidecar
) -> None:
    config = BridgeConfig(indices=(("small", RerankSpec(RerankOptions(window=6))),))
    source = json.dumps({"query": {"match": {"text": "archive"}}})
    async for proxy in start_proxy(engine, tiny_sidecar.target, config):
        async with proxy.http.get(proxy.url + "/small/_search?q=files") as resp:  # no body
            assert resp.status == 200
            out = await resp.json()
        assert out["rerank"]["status"] == "reranked" and out["hits"]["hits"]
        async with proxy.http.get(proxy.url + "/small/_search", params={"source": source}) as resp:
            assert resp.status == 200
            out = await resp.json()
        # The query of ``source`` is the search, not a match-all window the bridge made up.
        assert out["rerank"]["status"] == "reranked" and ids(out) == ["tar"]


async def test_an_msearch_header_line_may_be_empty(proxy: Proxy, engine: Engine) -> None:
    query = {"query": {"match": {"text": QUERY}}, "size": 3}
    lines = ["", json.dumps({**query, "ext": {"rerank": RERANK}}), "{}", json.dumps(query)]
    ndjson = "\n".join(lines) + "\n"
    status, out = await proxy.call("POST", "/small/_msearch", ndjson)
    assert status == 200
    first, second = out["responses"]
    assert first["rerank"]["status"] == "reranked" and len(first["hits"]["hits"]) == 3
    assert "rerank" not in second and len(second["hits"]["hits"]) == 3


async def test_a_body_that_is_not_utf8_goes_to_the_engine_as_it_came(
    proxy: Proxy, engine: Engine
) -> None:
    body = b'{"query": {"match": {"text": "caf\xe9"}}, "ext": {"rerank": {"window": 3}}}'
    headers = {"Content-Type": "application/json"}
    async with proxy.http.post(engine.url + "/small/_search", data=body, headers=headers) as resp:
        expected = resp.status
    async with proxy.http.post(proxy.url + "/small/_search", data=body, headers=headers) as resp:
        assert resp.status == expected and "X-Rerankd-Rerank" not in resp.headers


async def test_long_headers_pass_both_ways(proxy: Proxy, engine: Engine) -> None:
    # A SAML or bearer token can be longer than aiohttp's own 8 KiB bound; the engines take 16.
    headers = {"X-Opaque-Id": "x" * 12_000, "Content-Type": "application/json"}
    body = {"query": {"match": {"text": QUERY}}, "size": 3, "ext": {"rerank": RERANK}}
    async with proxy.http.post(proxy.url + "/small/_search", json=body, headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["rerank"]["status"] == "reranked"


async def test_pretty_answers_are_indented(proxy: Proxy) -> None:
    body = {"query": {"match": {"text": QUERY}}, "size": 2, "ext": {"rerank": RERANK}}
    async with proxy.http.post(proxy.url + "/small/_search?pretty", json=body) as resp:
        raw = await resp.read()
    assert raw.startswith(b"{\n  ") and json.loads(raw)["rerank"]["status"] == "reranked"
    async with proxy.http.post(proxy.url + "/small/_search?pretty=false", json=body) as resp:
        assert b"\n" not in await resp.read()


async def test_a_sidecar_restarted_with_lower_limits_is_asked_again(engine: Engine) -> None:
    # The bridge remembers a server's limits; a server restarted with lower ones refuses a
    # request made to the old ones, and the bridge asks again instead of skipping for ever.
    body = {"query": {"match": {"text": "files"}}, "size": 8, "ext": {"rerank": RERANK}}
    port = free_port()
    settings = Settings(model="fake", warmup=False, max_documents=1000)
    async for proxy in start_proxy(engine, f"127.0.0.1:{port}"):
        with run_sidecar(settings, lambda _: FakeScorer(), port=port):
            status, out = await proxy.call("POST", "/small/_search", body)
            assert status == 200 and out["rerank"]["status"] == "reranked"
        lower = dataclasses.replace(settings, max_documents=3)
        with run_sidecar(lower, lambda _: FakeScorer(), port=port):
            for _ in range(40):  # until the bridge's channel has reconnected
                status, out = await proxy.call("POST", "/small/_search", body)
                if out["rerank"].get("reason") != "unavailable":
                    break
                await asyncio.sleep(0.25)
    assert status == 200 and out["rerank"]["status"] == "reranked", out["rerank"]
    assert out["rerank"]["scored"] == RERANK["window"]


async def test_a_bridge_that_cannot_listen_leaves_nothing_open(fake_sidecar: FakeSidecar) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        settings = ProxySettings(engine=None, reranker=Connection(fake_sidecar.target), port=port)
        bridge = Bridge(settings, RerankStats())
        with pytest.raises(OSError):
            await bridge.start()
    assert bridge._session is not None and bridge._session.closed
