"""Overload at about 3x capacity: only RESOURCE_EXHAUSTED sheds, the queue bound holds, and
latency recovers once the load drops.

The model is simulated (a fixed time per pair on the model thread) so that capacity is known
and the test does not depend on this machine's speed.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter
from typing import Any

import grpc
import pytest

from rerankd import AsyncClient, RerankdError
from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.scheduler import BatchScheduler
from rerankd_server.servicer import RETRY_PUSHBACK_KEY
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


def _overload(settings: Settings) -> Counter[str]:
    """Offer about 3x capacity for a few seconds; the answers' statuses. Checks that the queue
    bound held throughout, shedding was counted, and latency recovers once the load drops."""
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
        assert max(depth) <= MAX_QUEUE_PAIRS
        assert scheduler.stats.pairs_shed == codes["RESOURCE_EXHAUSTED"] * PAIRS_PER_CALL
        under_load = statistics.median(queue_times)

        async def after() -> int:
            async with AsyncClient(running.target) as client:
                result = await client.rerank("calm", docs)
                return result.usage.queue_time_us

        assert scheduler.queue_pairs == 0
        assert asyncio.run(after()) < under_load
        return codes


OVERLOAD = Settings(
    model="fake",
    warmup=False,
    max_queue_pairs=MAX_QUEUE_PAIRS,
    max_documents=PAIRS_PER_CALL,
    max_batch_size=16,
)


def test_overload_sheds_with_resource_exhausted_and_recovers() -> None:
    codes = _overload(OVERLOAD)
    assert set(codes) <= {"OK", grpc.StatusCode.RESOURCE_EXHAUSTED.name}, codes
    assert codes["OK"] > 0 and codes["RESOURCE_EXHAUSTED"] > 0, codes


def test_a_paused_event_loop_loses_no_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's event loop stops for a second twice under the storm, as a garbage
    collection of a large heap can stop it: the calls that arrive meanwhile wait in gRPC core
    and are answered, none dropped there with a bare CANCELLED."""
    submit = BatchScheduler.submit
    calls = itertools.count()

    async def pausing(self: BatchScheduler, *args: Any, **kwargs: Any) -> Any:
        if next(calls) in (100, 300):
            time.sleep(1.0)  # blocks the server's loop; the client's own loop goes on sending
        return await submit(self, *args, **kwargs)

    monkeypatch.setattr(BatchScheduler, "submit", pausing)
    codes = _overload(OVERLOAD)
    assert set(codes) <= {"OK", grpc.StatusCode.RESOURCE_EXHAUSTED.name}, codes
    assert codes["OK"] > 0, codes


DEADLINE_S = 1.0


def test_overload_with_deadlines_is_refused_at_once_not_left_to_time_out() -> None:
    """At about 3x capacity with a queue bound far above what a deadline allows, calls whose
    queue ahead would outlast their deadline get RESOURCE_EXHAUSTED at once, with gRPC's
    pushback hint, instead of waiting to end in DEADLINE_EXCEEDED."""
    settings = Settings(model="fake", warmup=False, max_documents=PAIRS_PER_CALL, max_batch_size=16)
    with run_sidecar(settings, lambda _: SlowScorer()) as running:
        docs = [f"document {i}" for i in range(PAIRS_PER_CALL)]
        codes: Counter[str] = Counter()
        pushbacks: list[str] = []

        async def one(stub: Any, i: int) -> None:
            request = pb.RerankRequest(
                query=f"query {i}", documents=[pb.Document(text=d) for d in docs]
            )
            try:
                await stub.Rerank(request, timeout=DEADLINE_S)
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                trailers = dict(exc.trailing_metadata() or ())
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    pushbacks.append(str(trailers.get(RETRY_PUSHBACK_KEY, "")))
            else:
                codes["OK"] += 1

        async def storm() -> None:
            async with grpc.aio.insecure_channel(running.target) as channel:
                stub = rerank_pb2_grpc.RerankServiceStub(channel)
                for i in range(40):  # learn the model's speed first
                    await one(stub, i)
                calls = []
                loop = asyncio.get_running_loop()
                start = loop.time()
                for i in range(int(OFFERED_CALLS_PER_SECOND * LOAD_SECONDS)):
                    await asyncio.sleep(
                        max(0.0, start + i / OFFERED_CALLS_PER_SECOND - loop.time())
                    )
                    calls.append(asyncio.create_task(one(stub, i)))
                await asyncio.gather(*calls)

        asyncio.run(storm())
        # Measured: 150-269 OK, 341-460 DEADLINE_EXCEEDED (56-75%) and no RESOURCE_EXHAUSTED
        # before admission by estimated wait; since, about 200 OK, 190-310 RESOURCE_EXHAUSTED
        # and 90-200 DEADLINE_EXCEEDED, nearly all from gRPC's own deadline: the client shares
        # this process's GIL with the server, so on a busy machine an answer sent in time can
        # still arrive late.
        total = sum(codes.values())
        assert codes["OK"] > 0 and codes["RESOURCE_EXHAUSTED"] >= 0.2 * total, codes
        assert codes["DEADLINE_EXCEEDED"] <= 0.5 * total, codes
        assert pushbacks and all(p.isdigit() and int(p) > 0 for p in pushbacks), pushbacks[:5]


def test_a_burst_of_concurrent_calls_ends_in_defined_statuses() -> None:
    """3,000 calls at once: none is dropped by gRPC core with a bare CANCELLED (it sheds calls
    the event loop has not taken in yet beyond 1,000 by default); each is answered."""
    settings = Settings(model="fake", warmup=False)
    with run_sidecar(settings, lambda _: FakeScorer()) as running:
        codes: Counter[str] = Counter()

        async def burst() -> None:
            async with grpc.aio.insecure_channel(running.target) as channel:
                stub = rerank_pb2_grpc.RerankServiceStub(channel)
                request = pb.RerankRequest(query="q", documents=[pb.Document(text="d")])

                async def one() -> None:
                    try:
                        await stub.Rerank(request, timeout=60)
                    except grpc.aio.AioRpcError as exc:
                        codes[exc.code().name] += 1
                    else:
                        codes["OK"] += 1

                await asyncio.gather(*(one() for _ in range(3000)))

        asyncio.run(burst())
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
