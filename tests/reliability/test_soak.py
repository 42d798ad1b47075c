"""A soak: under steady load, memory, file descriptors and asyncio tasks stay flat.

CI runs a short soak; set RERANKD_SOAK_SECONDS (e.g. 300) for a long one. The server is a real
process: its resident memory and descriptors come from /proc, its task count from /metrics.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest

from rerankd import AsyncClient, RerankdError
from rerankd_server.process import ServerProcess, free_port, start_server
from support.metrics import scrape

SOAK_SECONDS = float(os.environ.get("RERANKD_SOAK_SECONDS", "8"))


def snapshot(server: ServerProcess, metrics_port: int) -> dict[str, float]:
    pid = server.proc.pid
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    values = {name: value for (name, _), value in scrape(metrics_port).items()}
    return {
        "rss_mb": rss_kb / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "tasks": values["rerankd_event_loop_tasks"],
        "queue_pairs": values["rerankd_queue_pairs"],
        "queue_bytes": values["rerankd_queue_bytes"],
        "pairs": values["rerankd_pairs_total"],
    }


def settled(before: dict[str, float], after: dict[str, float]) -> bool:
    """No queued pairs or held request bytes, and tasks and descriptors back near where the
    load began."""
    return (
        after["queue_pairs"] == 0
        and after["queue_bytes"] == 0
        and after["tasks"] <= before["tasks"] + 4
        and after["fds"] <= before["fds"] + 4
    )


async def load(target: str, seconds: float, seed: int, min_ok: int = 0) -> dict[str, int]:
    """Mixed traffic: normal calls, cancelled calls, calls that time out, bad calls.

    Runs ``seconds``, then on (for at most four times as long) until ``min_ok`` calls succeeded
    and each kind of failure happened: a slow or busy machine still soaks the full mix.
    """
    rng = random.Random(seed)
    counts = {"ok": 0, "error": 0, "cancelled": 0}
    start = time.monotonic()

    def more() -> bool:
        elapsed = time.monotonic() - start
        mixed = counts["ok"] >= min_ok and counts["error"] > 0 and counts["cancelled"] > 0
        return elapsed < seconds or (not mixed and elapsed < 5 * seconds)

    async def worker(client: AsyncClient) -> None:
        while more():
            docs = ["word " * rng.randint(0, 150) for _ in range(rng.randint(1, 40))]
            kind = rng.random()
            try:
                if kind < 0.1:  # the caller goes away mid-call
                    task = asyncio.ensure_future(client.rerank("q", docs))
                    await asyncio.sleep(0.002)
                    task.cancel()
                    counts["cancelled"] += 1
                    continue
                if kind < 0.2:
                    await client.rerank("q", docs, timeout=0.003)
                elif kind < 0.25:
                    await client.rerank("", docs)
                else:
                    await client.rerank("query", docs, top_n=5)
                counts["ok"] += 1
            except RerankdError:
                counts["error"] += 1

    async with AsyncClient(target) as client:
        await asyncio.gather(*(worker(client) for _ in range(6)))
    return counts


@pytest.mark.slow
def test_soak_keeps_memory_descriptors_and_tasks_flat(tiny_models: dict[str, Path]) -> None:
    metrics_port = free_port()
    server = start_server(tiny_models["modernbert"], "--metrics-port", str(metrics_port))
    with server:
        asyncio.run(load(server.target, min(3.0, SOAK_SECONDS / 2), seed=1))  # warm everything up
        before = snapshot(server, metrics_port)
        counts = asyncio.run(load(server.target, SOAK_SECONDS, seed=2, min_ok=50))
        # Cancelled and expired work is dropped, and closed calls' tasks end, a moment after the
        # load stops (later on a busy machine): wait for that; a leak never settles.
        end = time.monotonic() + 30
        after = snapshot(server, metrics_port)
        while time.monotonic() < end and not settled(before, after):
            time.sleep(0.1)
            after = snapshot(server, metrics_port)
        assert server.stop() == 0
    print(f"soak {SOAK_SECONDS}s: {counts}; before {before}; after {after}")
    assert counts["ok"] >= 50 and counts["cancelled"] > 0 and counts["error"] > 0
    assert after["pairs"] > before["pairs"]
    assert after["queue_pairs"] == 0 and after["queue_bytes"] == 0
    assert after["fds"] <= before["fds"] + 4
    assert after["tasks"] <= before["tasks"] + 4
    assert after["rss_mb"] <= before["rss_mb"] * 1.15 + 20
