"""32 concurrent mixed-size requests give the results of the same requests sent one by one, and
those of ``CrossEncoder.predict``, for a classifier and for the Ettin module chain."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from rerankd import AsyncClient, Client
from rerankd_server.settings import Settings
from support.sidecar import run_sidecar

VOCAB = ("search engine rerank query document list files copy move grep sort find man page").split()


def requests(seed: int = 11) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    out = []
    for r in range(32):
        query = " ".join(rng.choices(VOCAB, k=rng.randint(1, 8)))
        docs = [
            " ".join(rng.choices(VOCAB, k=rng.choice([0, 3, 10, 40, 120, 300])))
            for _ in range(rng.randint(1, 60))
        ]
        out.append((f"{r} {query}", docs))
    return out


@pytest.mark.parametrize("name", ["bert", "ettin"])
def test_concurrent_requests_equal_sequential_ones(tiny_models: dict[str, Path], name: str) -> None:
    path = tiny_models[name]
    settings = Settings(model=str(path), device="cpu", max_batch_tokens=1024, lookahead_pairs=64)
    work = requests()
    with run_sidecar(settings) as running:
        with Client(running.target) as client:
            sequential = [client.rerank(q, docs) for q, docs in work]

        async def together() -> list:
            async with AsyncClient(running.target) as aclient:
                return await asyncio.gather(*(aclient.rerank(q, d) for q, d in work))

        concurrent = asyncio.run(together())
        stats = running.sidecar.scheduler.stats if running.sidecar.scheduler else None
    for one, many in zip(sequential, concurrent, strict=True):
        alone = {r.index: r.score for r in one.results}
        mixed = {r.index: r.score for r in many.results}
        assert sorted(mixed) == sorted(alone) == list(range(len(alone)))
        # Batches padded to other lengths sum in another order, so scores may differ in the
        # last float bits (as CrossEncoder.predict does with another batch_size): 1e-5, the
        # parity tolerance. The order must follow the scores, ties by index.
        np.testing.assert_allclose(
            [mixed[i] for i in range(len(mixed))],
            [alone[i] for i in range(len(alone))],
            atol=1e-5,
            rtol=0,
        )
        keys = [(-r.score, r.index) for r in many.results]
        assert keys == sorted(keys)
        exact_order = [r.index for r in one.results]
        assert [r.index for r in many.results] == exact_order or _only_near_ties_swapped(
            one.results, many.results
        )
    assert stats is not None and stats.batches > 0
    reference = CrossEncoder(str(path), device="cpu")
    for (query, docs), many in zip(work, concurrent, strict=True):
        mixed = {r.index: r.score for r in many.results}
        expected = reference.predict([(query, d) for d in docs], batch_size=16)
        np.testing.assert_allclose([mixed[i] for i in range(len(docs))], expected, atol=1e-5)


def _only_near_ties_swapped(a: list, b: list) -> bool:
    """True when the two orders differ only among results whose scores are within 1e-5."""
    return all(abs(x.score - y.score) <= 1e-5 for x, y in zip(a, b, strict=True))
