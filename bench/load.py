"""Load drivers: closed-loop concurrency and open-loop Poisson arrivals.

Open-loop latency is measured from each request's intended send time, so a server (or a load
generator) that falls behind is charged for the queueing it causes (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bench.workloads import Request


class Target(Protocol):
    """A server the drivers can load: rerankd over gRPC or infinity-emb over HTTP."""

    async def open(self, count: int) -> None: ...

    async def close(self) -> None: ...

    async def send(self, slot: int, query: str, docs: list[str], timeout: float | None) -> Any: ...


@dataclass(frozen=True)
class LoadResult:
    """Completed calls, their latencies (s), the wall time and the failures."""

    latencies: list[float]
    pairs: int
    tokens: int
    wall_s: float
    failed: int
    offered_rps: float = 0.0
    client_cpu_s: float = 0.0  # this process's CPU time meanwhile: the load generator's cost
    #: ``perf_counter`` readings between which every closed-loop caller was waiting on a call
    #: (from the moment the last of them had its first answer to the last request's send), or
    #: None when no such stretch came: the run's steady state, without its ramp-up and drain.
    steady: tuple[float, float] | None = None

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.wall_s if self.wall_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(
    target: Target,
    requests: Sequence[Request],
    tokens: Sequence[int],
    concurrency: int,
    timeouts: Sequence[float | None] | None = None,
) -> LoadResult:
    """``concurrency`` callers each send their next request as soon as the last one returns.

    Args:
        tokens: tokens per request (to report tokens/s), parallel to ``requests``.
        timeouts: per-request deadline in seconds (None = none); failures are counted.
    """
    await target.open(concurrency)
    queue = list(range(len(requests)))
    queue.reverse()
    latencies: list[float] = []
    done_pairs = done_tokens = failed = 0
    waiting_first = concurrency  # callers without an answer yet
    steady_from = steady_to = 0.0

    async def caller(slot: int) -> None:
        nonlocal done_pairs, done_tokens, failed, waiting_first, steady_from, steady_to
        first = True
        while queue:
            i = queue.pop()
            req = requests[i]
            start = time.perf_counter()
            if not queue:
                steady_to = start
            try:
                await target.send(slot, req.query, req.documents, timeouts[i] if timeouts else None)
            except Exception:
                failed += 1
                continue
            finally:
                if first:
                    first, waiting_first = False, waiting_first - 1
                    if not waiting_first:
                        steady_from = time.perf_counter()
            latencies.append(time.perf_counter() - start)
            done_pairs += len(req.documents)
            done_tokens += tokens[i]

    start, cpu = time.perf_counter(), time.process_time()
    try:
        await asyncio.gather(*(caller(slot) for slot in range(concurrency)))
    finally:
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        await target.close()
    steady = (steady_from, steady_to) if 0 < steady_from < steady_to else None
    return LoadResult(
        latencies, done_pairs, done_tokens, wall, failed, client_cpu_s=cpu, steady=steady
    )


async def open_loop(
    target: Target,
    requests: Sequence[Request],
    tokens: Sequence[int],
    rate_rps: float,
    seed: int = 0,
    max_outstanding: int = 64,
) -> LoadResult:
    """Send ``requests`` at Poisson arrivals of ``rate_rps``; latency from the intended time."""
    await target.open(max_outstanding)
    rng = random.Random(seed)
    latencies: list[float] = []
    done_pairs = done_tokens = failed = 0

    async def one(slot: int, i: int, intended: float) -> None:
        nonlocal done_pairs, done_tokens, failed
        req = requests[i]
        try:
            await target.send(slot, req.query, req.documents, None)
        except Exception:
            failed += 1
            return
        latencies.append(time.perf_counter() - intended)
        done_pairs += len(req.documents)
        done_tokens += tokens[i]

    tasks = []
    start = time.perf_counter()
    intended = start
    try:
        for i in range(len(requests)):
            intended += rng.expovariate(rate_rps)
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, i, intended)))
        await asyncio.gather(*tasks)
    finally:
        wall = time.perf_counter() - start
        await target.close()
    return LoadResult(latencies, done_pairs, done_tokens, wall, failed, rate_rps)
