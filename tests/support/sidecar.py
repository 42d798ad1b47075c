"""Run a real rerankd Sidecar in-process, on its own event loop thread, for synchronous tests.

Faster than a subprocess (the model loads once per fixture) while exercising the same grpc.aio
server, servicer, scheduler and scorer as production.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rerankd_server.app import ScorerFactory, Sidecar, load_hf_scorer
from rerankd_server.process import free_port
from rerankd_server.settings import Settings


@dataclass
class RunningSidecar:
    sidecar: Sidecar
    loop: asyncio.AbstractEventLoop

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sidecar.port}"


@contextmanager
def run_sidecar(
    settings: Settings,
    scorer_factory: ScorerFactory = load_hf_scorer,
    *,
    wait_ready: bool = True,
    metrics: bool = False,
    port: int = 0,
) -> Iterator[RunningSidecar]:
    """Start a Sidecar on 127.0.0.1 (``port``, else a free one) in a thread; stop it (grace
    5 s) on exit.

    Metrics are served on a free port only when ``metrics`` is true (tests run several servers).
    """
    metrics_port = free_port() if metrics else 0
    settings = dataclasses.replace(settings, host="127.0.0.1", port=port, metrics_port=metrics_port)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="sidecar-loop", daemon=True)
    thread.start()
    sidecar = Sidecar(settings, scorer_factory)
    try:
        asyncio.run_coroutine_threadsafe(sidecar.start(), loop).result(30)
        if wait_ready:
            asyncio.run_coroutine_threadsafe(sidecar.ready(), loop).result(120)
        yield RunningSidecar(sidecar, loop)
    finally:
        asyncio.run_coroutine_threadsafe(sidecar.aclose(grace=5), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
