"""The Python client speaks the whole API: chunking, normalizations, min_score, the stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rerankd import AsyncClient, Chunking, Client, InvalidArgument
from rerankd_server.settings import Settings
from support.sidecar import run_sidecar

DOCS = ["ls lists directory contents", "word " * 400, "cp copies files", ""]


def test_client_options_and_stream(tiny_models: dict[str, Path]) -> None:
    settings = Settings(
        model=f"tiny={tiny_models['modernbert']}",
        extra_models=(f"other={tiny_models['bert']}",),
        device="cpu",
        score_cache_bytes=1 << 20,
    )
    with run_sidecar(settings) as running, Client(running.target) as client:
        info = client.model_info()
        assert info.served_models == ("tiny", "other") and info.limits.max_stream_in_flight == 8
        chunked = client.rerank(
            "list files", DOCS, chunking=Chunking(max_chunks=3, overlap_tokens=8)
        )
        long = next(r for r in chunked.results if r.index == 1)
        assert long.chunk is not None and long.chunk.count == 3
        assert all(
            r.chunk is not None and r.chunk.count == 1 for r in chunked.results if r.index != 1
        )
        raw = client.score([("list files", d) for d in DOCS], normalization="raw").scores
        sigmoid = client.score([("list files", d) for d in DOCS], normalization="sigmoid").scores
        assert all(0 < s < 1 for s in sigmoid) and raw != sigmoid
        cut = client.rerank("list files", DOCS, min_score=sorted(sigmoid)[2])
        assert len(cut.results) == 2
        again = client.rerank("list files", DOCS, model="other")
        assert (
            again.model == "other"
            and client.rerank("list files", DOCS, model="other").usage.cached_pairs == 4
        )
        items = [(f"r{i}", f"query {i}", DOCS[: 1 + i % 4]) for i in range(10)]
        items.append(("bad", "", DOCS))
        streamed = {r.request_id: r for r in client.rerank_stream(iter(items), top_n=2)}
        assert isinstance(streamed["bad"].error, InvalidArgument)
        for request_id, query, docs in items[:-1]:
            reply = streamed[request_id]
            assert reply.error is None and reply.reranked is not None
            assert reply.reranked.results == client.rerank(query, docs, top_n=2).results

        async def async_stream() -> list[str]:
            async with AsyncClient(running.target) as aclient:
                return [r.request_id async for r in aclient.rerank_stream(items[:3])]

        assert sorted(asyncio.run(async_stream())) == ["r0", "r1", "r2"]
        with pytest.raises(ValueError):
            client.rerank("q", DOCS, normalization="softmax")  # type: ignore[arg-type]
