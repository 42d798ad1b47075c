"""Health Watch streams whose client never reads hold up no one but themselves.

A watcher's writes wait on HTTP/2 flow control, so a client that never reads (its window 0)
keeps a write pending for as long as it likes. Neither readiness turning SERVING once the model
has loaded, nor the drain, nor the other watchers may wait for it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rerankd_server.app import LIVENESS_SERVICE, _HealthServicer
from rerankd_server.scoring.base import Scorer
from rerankd_server.servicer import SERVICE_NAME
from rerankd_server.settings import Settings
from support.fake_scorer import FakeScorer
from support.sidecar import run_sidecar

from .helpers import FAKE_MODEL, HANG, NeverReading, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WATCH = "/grpc.health.v1.Health/Watch"


def test_a_watcher_that_never_reads_holds_neither_readiness_nor_the_drain() -> None:
    loaded = threading.Event()

    def held_model(_: Settings) -> Scorer:
        loaded.wait(HANG)  # so that the watcher is there before readiness turns SERVING
        return FakeScorer()

    statuses: list[int] = []
    with run_sidecar(FAKE_MODEL, held_model, wait_ready=False) as running:
        health = running.sidecar._health
        assert health is not None
        stuck = NeverReading(running.target)
        channel = grpc.insecure_channel(running.target)  # open until the drain is over
        try:
            stuck.call(WATCH, health_pb2.HealthCheckRequest().SerializeToString())
            wait_for(lambda: len(health._watches) == 1, "the stuck watcher")
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest())
            reader = threading.Thread(target=lambda: statuses.extend(r.status for r in watch))
            reader.start()
            wait_for(lambda: statuses == [NOT_SERVING], "the reading watcher's first status")
            loaded.set()
            asyncio.run_coroutine_threadsafe(running.sidecar.ready(), running.loop).result(HANG)
            wait_for(lambda: statuses == [NOT_SERVING, SERVING], "the reading watcher told")
            assert stub.Check(health_pb2.HealthCheckRequest()).status == SERVING
        except BaseException:
            stuck.socket.close()  # else the drain on the way out would wait for it too
            channel.close()
            raise
    # The drain (leaving run_sidecar) finished with the stuck watcher still connected, and
    # the reading watcher was told NOT_SERVING before its stream ended.
    reader.join(HANG)
    stuck.socket.close()
    channel.close()
    assert statuses == [NOT_SERVING, SERVING, NOT_SERVING]


class Context:
    """A Watch call's context whose writes are recorded, or never finish when ``stuck``."""

    def __init__(self, stuck: bool = False) -> None:
        self.stuck = stuck
        self.written: list[int] = []

    async def write(self, response: Any) -> None:
        if self.stuck:
            await asyncio.Event().wait()
        self.written.append(response.status)


async def settle() -> None:
    """Let every task that can run do so."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_setting_a_status_never_waits_for_a_watcher() -> None:
    health = _HealthServicer()
    health.set_ready(False)
    request = health_pb2.HealthCheckRequest()
    stuck, reading = Context(stuck=True), Context()
    watches = [asyncio.create_task(health.Watch(request, c)) for c in (stuck, reading)]
    await settle()  # both have started; the stuck one waits in its first write
    health.set_ready(True)
    await settle()
    assert reading.written == [NOT_SERVING, SERVING]
    health.drain()
    await asyncio.wait_for(health.close(0.5), HANG)
    assert reading.written == [NOT_SERVING, SERVING, NOT_SERVING]
    done = await asyncio.gather(*watches, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError) and done[1] is None


def test_list_gives_every_service_and_readiness_follows_the_drain() -> None:
    """grpc.health.v1's List: the stock servicer does not implement it, and each call logged
    an ERROR traceback."""
    with run_sidecar(FAKE_MODEL, lambda _: FakeScorer()) as running:
        sidecar = running.sidecar
        with grpc.insecure_channel(running.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            listed = stub.List(health_pb2.HealthListRequest(), timeout=HANG)
            statuses = {name: entry.status for name, entry in listed.statuses.items()}
            assert statuses == dict.fromkeys(("", SERVICE_NAME, LIVENESS_SERVICE), SERVING)
            assert sidecar._health is not None
            sidecar._health.drain()
            listed = stub.List(health_pb2.HealthListRequest(), timeout=HANG)
            statuses = {name: entry.status for name, entry in listed.statuses.items()}
            assert statuses == {
                "": NOT_SERVING,
                SERVICE_NAME: NOT_SERVING,
                LIVENESS_SERVICE: SERVING,
            }
