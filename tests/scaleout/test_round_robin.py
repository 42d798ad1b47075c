"""Client-side scale-out against three real rerankd processes on loopback.

Each replica serves the same tiny model under its own ``--model-name``; a response's ``model``
field names the replica that scored it, which is how the tests count the load per replica
without reaching into the servers. The client gets the three targets as a list (a static
``ipv4:`` target, balanced round-robin by gRPC) exactly as an application would.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

import rerankd
from rerankd import AsyncClient, Client
from rerankd_server.process import ServerProcess, start_server

pytestmark = pytest.mark.slow

NAMES = ["replica-0", "replica-1", "replica-2"]
DOCUMENTS = [f"document {i} about {'files ' * (i % 5)}and directories" for i in range(8)]


@pytest.fixture(scope="module")
def replicas(tiny_models: dict[str, Path]) -> Iterator[list[ServerProcess]]:
    """Three sidecars started side by side; stopped with SIGTERM (exit 0) unless killed."""
    with ExitStack() as stack, ThreadPoolExecutor(len(NAMES)) as pool:
        futures = [
            pool.submit(
                start_server,
                tiny_models["modernbert"],
                "--model-name",
                name,
                "--grace-period",
                "5",
                "--no-warmup",  # the tiny model needs none; start-up stays short
                # Three replicas share this machine's cores: one compute thread each, as a
                # CPU pool would be sized, instead of three OpenMP pools spinning on 2 cores.
                env={"OMP_NUM_THREADS": "1"},
            )
            for name in NAMES
        ]
        servers = []
        for future in futures:  # collect every one, so a failed start leaves none running
            try:
                servers.append(stack.enter_context(future.result()))
            except Exception:
                for other in futures:
                    if other is not future and other.exception() is None:
                        stack.enter_context(other.result())
                raise
        yield servers
        for server in servers:
            if server.proc.poll() is None:
                code = server.stop()
                assert code == 0, f"{server.target} exited {code}:\n{server.output()}"


def _connect_all(client: Client) -> None:
    """Round-robin picks only connected replicas: call until each one has answered."""
    seen: set[str] = set()
    deadline = time.monotonic() + 20
    while seen != set(NAMES):
        assert time.monotonic() < deadline, f"only {sorted(seen)} answered"
        seen.add(client.rerank("q", DOCUMENTS[:1]).model)


def test_the_load_spreads_over_every_replica(replicas: list[ServerProcess]) -> None:
    with Client([server.target for server in replicas], timeout=10) as client:
        _connect_all(client)
        served = collections.Counter(client.rerank("files", DOCUMENTS).model for _ in range(60))
    assert set(served) == set(NAMES)
    assert all(15 <= served[name] <= 25 for name in NAMES), served  # 20 each under round-robin


async def test_a_replica_killed_mid_run_fails_no_call(replicas: list[ServerProcess]) -> None:
    """SIGKILL one replica while calls are in flight: retries (UNAVAILABLE, up to 4 attempts,
    through the service config) carry them to the others, so no call fails."""
    victim = replicas[1]
    workers, calls_per_worker, kill_after = 6, 60, 60
    answered: list[tuple[float, str]] = []
    failures: list[BaseException] = []
    killed_at: list[float] = []

    async with AsyncClient([server.target for server in replicas], timeout=10) as client:
        with Client([server.target for server in replicas], timeout=10) as warm:
            _connect_all(warm)  # the sync channel proves all three are up and reachable

        async def worker() -> None:
            for _ in range(calls_per_worker):
                try:
                    reranked = await client.rerank("files", DOCUMENTS)
                except rerankd.RerankdError as err:
                    failures.append(err)
                    continue
                answered.append((time.monotonic(), reranked.model))
                if len(answered) == kill_after and not killed_at:
                    victim.proc.send_signal(signal.SIGKILL)  # mid-run: other calls are in flight
                    killed_at.append(time.monotonic())

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.monotonic() - started

    assert victim.stop() == -signal.SIGKILL
    assert failures == [], f"{len(failures)} failed calls, first: {failures[0]!r}"
    assert len(answered) == workers * calls_per_worker
    assert killed_at, "the run ended before the kill"
    before = collections.Counter(name for _, name in answered[:kill_after])
    # Answers already received when the kill came may be counted just after it: skip a
    # round of every worker's calls, then the dead replica must be gone for good.
    after = collections.Counter(name for _, name in answered[kill_after + 2 * workers :])
    assert set(before) == set(NAMES), before  # all three shared the load before the kill
    assert set(after) == {NAMES[0], NAMES[2]}, after  # the dead one is out, the others carry on
    assert min(after.values()) >= sum(after.values()) // 4, after
    assert elapsed < 60
