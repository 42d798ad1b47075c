"""Prometheus metrics, served over HTTP on their own port.

Request metrics are observed by the servicer's handler wrapper; scheduler counters are read
from ``SchedulerStats`` at scrape time (nothing on the hot path but a few integer additions),
except the per-batch histograms, observed through the scheduler's ``on_batch`` hook.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rerankd.v1 import rerank_pb2
from rerankd_server.cache import ScoreCache
from rerankd_server.scheduler import BatchScheduler
from rerankd_server.settings import CALL_BYTES

log = logging.getLogger(__name__)

Observer = Callable[[str, str, float], None]
"""Records one finished RPC: (method, status code name, seconds)."""

_SERVICE = rerank_pb2.DESCRIPTOR.services_by_name["RerankService"]
_METHODS = frozenset(f"/{_SERVICE.full_name}/{method.name}" for method in _SERVICE.methods)


def method_label(full_method: str) -> str:
    """The ``method`` label of a call to ``full_method`` (``/package.Service/Method``): the
    method's name when the service serves it, else ``unknown``. Label values come from this
    fixed set because callers choose the path: one series per made-up path would let anyone
    who can reach the port grow /metrics without bound."""
    return full_method.rsplit("/", 1)[-1] if full_method in _METHODS else "unknown"


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """All of rerankd's metrics in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rerankd_requests",
            "RPCs handled, by method and gRPC status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rerankd_request_duration_seconds",
            "RPC latency from arrival to response, by method.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_pairs = Histogram(
            "rerankd_batch_pairs",
            "Pairs per model batch.",
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_tokens = Histogram(
            "rerankd_batch_tokens",
            "Tokens the model computed per batch (padding included).",
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.model_load_seconds = Gauge(
            "rerankd_model_load_seconds",
            "Seconds taken to load and warm up the model.",
            registry=self.registry,
        )
        self._counters: dict[tuple[str, str], Any] = {}
        self._latencies: dict[str, Any] = {}
        self._schedulers: list[BatchScheduler] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cache: ScoreCache | None = None
        self.held_bytes: Callable[[], int] | None = None  # the servicer's, read at scrape time
        self.registry.register(_SchedulerCollector(self._schedulers, self))
        self._server: Any = None

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        """Count one RPC. Label children are bound once and kept: ``labels()`` takes a lock
        and builds a key on every call, on the event loop, thousands of times a second."""
        key = (method, code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(method, code)
        latency = self._latencies.get(method)
        if latency is None:
            latency = self._latencies[method] = self.latency.labels(method)
        counter.inc()
        latency.observe(seconds)

    def watch(self, scheduler: BatchScheduler) -> None:
        """Export this scheduler's queue and counters, and observe its batches."""
        self._schedulers.append(scheduler)
        scheduler.stats.on_batch = self._on_batch

    def _on_batch(self, pairs: int, real: int, computed: int) -> None:
        self.batch_pairs.observe(pairs)
        self.batch_tokens.observe(computed)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server in a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        bound: int = server.server_address[1]
        return bound

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None

            def stop() -> None:
                server.shutdown()
                server.server_close()  # release the listening socket too

            threading.Thread(target=stop, daemon=True).start()


class _SchedulerCollector(Collector):
    """Reads scheduler counters at scrape time."""

    def __init__(self, schedulers: list[BatchScheduler], metrics: Metrics) -> None:
        self._schedulers = schedulers
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        def total(read: Callable[[BatchScheduler], float]) -> float:
            return float(sum(read(s) for s in self._schedulers))

        gauges = {
            "rerankd_queue_pairs": (
                "Pairs admitted and not yet answered.",
                lambda s: s.queue_pairs,
            ),
            "rerankd_queue_tokens": (
                "Tokens admitted and not yet answered.",
                lambda s: s.queue_tokens,
            ),
        }
        for name, (doc, read) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=total(read))
        if self._metrics.held_bytes is not None:
            yield GaugeMetricFamily(
                "rerankd_queue_bytes",
                f"Request bytes of the calls not yet over, and {CALL_BYTES} for each call "
                "itself (bounded by --max-queue-bytes).",
                value=self._metrics.held_bytes(),
            )
        counters: dict[str, tuple[str, Callable[[BatchScheduler], float]]] = {
            "rerankd_batches": ("Model batches run.", lambda s: s.stats.batches),
            "rerankd_pairs": ("Pairs scored by the model.", lambda s: s.stats.pairs_scored),
            "rerankd_real_tokens": ("Real tokens computed.", lambda s: s.stats.real_tokens),
            "rerankd_computed_tokens": (
                "Tokens computed, padding included; real/computed is padding efficiency.",
                lambda s: s.stats.computed_tokens,
            ),
            "rerankd_pairs_shed": (
                "Pairs refused with RESOURCE_EXHAUSTED at admission.",
                lambda s: s.stats.pairs_shed,
            ),
            "rerankd_pairs_expired": (
                "Pairs dropped because their deadline passed.",
                lambda s: s.stats.pairs_expired,
            ),
            "rerankd_pairs_cancelled": (
                "Pairs dropped because their caller cancelled.",
                lambda s: s.stats.pairs_cancelled,
            ),
            "rerankd_cancelled_compute_tokens": (
                "Tokens computed for callers that had already left.",
                lambda s: s.stats.cancelled_compute_tokens,
            ),
        }
        for name, (doc, read) in counters.items():
            yield CounterMetricFamily(name, doc, value=total(read))
        cache = self._metrics.cache
        if cache is not None:
            yield CounterMetricFamily(
                "rerankd_cache_hits", "Pairs answered from the score cache.", value=cache.hits
            )
            yield CounterMetricFamily(
                "rerankd_cache_misses",
                "Pairs looked up in the cache and not found.",
                value=cache.misses,
            )
            yield GaugeMetricFamily(
                "rerankd_cache_bytes",
                "Estimated memory held by the score cache.",
                value=cache.bytes,
            )
        if self._metrics.loop is not None:
            yield GaugeMetricFamily(
                "rerankd_event_loop_tasks",
                "asyncio tasks alive on the server's event loop (flat when nothing leaks).",
                value=len(asyncio.all_tasks(self._metrics.loop)),
            )
        real = total(lambda s: s.stats.real_tokens)
        computed = total(lambda s: s.stats.computed_tokens)
        yield GaugeMetricFamily(
            "rerankd_padding_efficiency",
            "Real tokens / computed tokens since start (1.0 = no padding).",
            value=real / computed if computed else 1.0,
        )
