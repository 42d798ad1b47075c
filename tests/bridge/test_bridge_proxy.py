"""The HTTP proxy against real engines and rerankd: pass-through, reranking, failure, paging."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import SMALL_CORPUS, Engine, FakeSidecar, dead_target

from rerankd_bridge.proxy import Bridge, ProxySettings, main
from rerankd_bridge.ranking import RerankOptions
from rerankd_bridge.spec import BridgeConfig, RerankSpec
from rerankd_bridge.stats import RerankStats
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
        reranker=reranker,
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
