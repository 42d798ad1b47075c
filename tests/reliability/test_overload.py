"""Overload at about 3x capacity: only RESOURCE_EXHAUSTED sheds, the queue bound holds, and
latency recovers once the load drops.

The model is simulated (a fixed time per pair on the model thread) so that capacity is known
and the test does not depend on this machine's speed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from typing import Any

import grpc

from rerankd import AsyncClient, RerankdError
from rerankd_server.settings import Settings
from support.fake_scorer import FakeScorer
from support.sidecar import run_sidecar

SECONDS_PER_PAIR = 0.002  # capacity: 500 pairs/s
PAIRS_PER_CALL = 8  # so about 62 calls/s
OFFERED_CALLS_PER_SECOND = 190  # about 3x capacity
LOAD_SECONDS = 3.0
MAX_QUEUE_PAIRS = 96


class SlowScorer(FakeScorer):
    """Holds the model thread for a fixed time per pair, like a device would."""

    def forward(self, batch: Any) -> Any:
        time.sleep(SECONDS_PER_PAIR * len(batch))
        return super().forward(batch)


def test_overload_sheds_with_resource_exhausted_and_recovers() -> None:
    settings = Settings(
        model="fake",
        warmup=False,
        max_queue_pairs=MAX_QUEUE_PAIRS,
        max_documents=PAIRS_PER_CALL,
        max_batch_size=16,
    )
    with run_sidecar(settings, lambda _: SlowScorer()) as running:
        scheduler = running.sidecar.scheduler
        assert scheduler is not None
        docs = [f"document {i}" for i in range(PAIRS_PER_CALL)]
        codes: Counter[str] = Counter()
        queue_times: list[int] = []
        depth: list[int] = []

        async def one(client: AsyncClient, i: int) -> None:
            try:
                result = await client.rerank(f"query {i}", docs, timeout=30)
            except RerankdError as exc:
                codes[exc.code.name] += 1
            else:
                codes["OK"] += 1
                queue_times.append(result.usage.queue_time_us)

        async def storm() -> None:
            async with AsyncClient(running.target) as client:
                calls = []
                loop = asyncio.get_running_loop()
                start = loop.time()
                count = int(OFFERED_CALLS_PER_SECOND * LOAD_SECONDS)
                for i in range(count):  # open loop: send on schedule, whatever the answers
                    await asyncio.sleep(
                        max(0.0, start + i / OFFERED_CALLS_PER_SECOND - loop.time())
                    )
                    calls.append(asyncio.create_task(one(client, i)))
                    depth.append(scheduler.queue_pairs)
                await asyncio.gather(*calls)

        asyncio.run(storm())
        assert set(codes) <= {"OK", grpc.StatusCode.RESOURCE_EXHAUSTED.name}, codes
        assert codes["OK"] > 0 and codes["RESOURCE_EXHAUSTED"] > 0, codes
        assert max(depth) <= MAX_QUEUE_PAIRS
        assert scheduler.stats.pairs_shed == codes["RESOURCE_EXHAUSTED"] * PAIRS_PER_CALL
        under_load = statistics.median(queue_times)

        async def after() -> int:
            async with AsyncClient(running.target) as client:
                result = await client.rerank("calm", docs)
                return result.usage.queue_time_us

        assert scheduler.queue_pairs == 0
        assert asyncio.run(after()) < under_load
