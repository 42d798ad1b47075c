"""The sidecar's lifecycle: listen, load, warm up, serve, drain.

The port opens first with health NOT_SERVING (probes see "starting", calls get UNAVAILABLE),
the model loads and warms up off the event loop, then health flips to SERVING. On SIGTERM or
SIGINT health flips to NOT_SERVING at once, new calls are refused, accepted calls get the
grace period to finish, and the process exits 0. A model that cannot be loaded ends the
process with exit code 2 and a message saying how to point it at a local folder; a port that
cannot be had (in use, not this machine's) or an unusable token file ends it with exit code 2
and one line naming it. Ports are never shared: gRPC's default ``SO_REUSEPORT`` would let a
second server on a port in use start and take half of the new connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from rerankd_server import logs, tracing
from rerankd_server.batching import (
    CPU_BATCH_OVERHEAD_SHARE,
    CUDA_BATCH_OVERHEAD_SHARE,
    MEASURED_OVERHEAD_SHARE,
    BatchLimits,
    SchedulerConfig,
)
from rerankd_server.cache import ScoreCache
from rerankd_server.errors import ModelLoadError, StartupError
from rerankd_server.metrics import Metrics
from rerankd_server.reranking import Reranker
from rerankd_server.scheduler import BatchScheduler
from rerankd_server.scoring.base import Scorer
from rerankd_server.security import (
    BearerTokenInterceptor,
    OpenServices,
    ReloadingCertificates,
    TokenFile,
)
from rerankd_server.servicer import SERVICE_NAME, RerankServicer, handlers
from rerankd_server.settings import Settings, parse_settings
from rerankd_server.workers import default_tokenizer_threads, model_executor

log = logging.getLogger("rerankd")

ScorerFactory = Callable[[Settings], Scorer]


def load_hf_scorer(settings: Settings) -> Scorer:
    """Load the configured Hugging Face cross-encoder (the default scorer factory)."""
    from rerankd_server.scoring.hf import HFCrossEncoder, resolve_placement

    placement = resolve_placement(settings.device, settings.dtype, settings.attention)
    return HFCrossEncoder(settings.model, placement, name=settings.served_name)


def default_batch_tokens(device: str) -> int:
    """The token budget ``--max-batch-tokens 0`` means: 16,384 on CUDA, 4,096 on the CPU."""
    return 16384 if device.startswith("cuda") else 4096


def scheduler_config(
    settings: Settings, scorer: Scorer, fixed_cost: float | None = None
) -> SchedulerConfig:
    """Resolve the token budget (auto: ``default_batch_tokens``) and a batch's fixed cost:
    ``fixed_cost`` tokens as the warm-up measured them (within ``MEASURED_OVERHEAD_SHARE`` of
    the budget), else the device's default share.

    A pair longer than the budget (a long-context model on CPU) runs in a batch of its own
    rather than raising the budget for every batch.
    """
    info = scorer.info
    budget = settings.max_batch_tokens or default_batch_tokens(info.device)
    cuda = info.device.startswith("cuda")
    overhead = CUDA_BATCH_OVERHEAD_SHARE if cuda else CPU_BATCH_OVERHEAD_SHARE
    if fixed_cost is not None:
        low, high = MEASURED_OVERHEAD_SHARE
        overhead = min(high, max(low, fixed_cost / budget))
    return SchedulerConfig(
        limits=BatchLimits(budget, settings.max_batch_size, info.padded, overhead),
        lookahead_pairs=settings.lookahead_pairs,
        lookahead_batches=settings.lookahead_batches,
        max_queue_pairs=settings.max_queue_pairs,
        max_queue_tokens=settings.max_queue_tokens,
        max_queue_wait=settings.max_queue_wait,
        cross_request=settings.cross_request_batching,
        tokenizer_threads=settings.tokenizer_threads or default_tokenizer_threads(),
    )


def check_port_free(host: str, port: int, flags: str) -> None:
    """Bind ``host:port`` once the way gRPC will (``SO_REUSEADDR``, no ``SO_REUSEPORT``) and let
    it go, so an address that cannot be had ends start-up with one line naming it; gRPC's own
    failure is a bare RuntimeError after a line of its core's log. Like gRPC, it accepts a host
    when any of its addresses can be bound, but a port in use on any of them is refused.

    Raises:
        StartupError: the port is in use, or the host does not resolve or is not this machine's.
    """
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port} ({flags}): {exc}") from None
    problems = []
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"cannot listen on {host}:{port} ({flags}): the port is in use"
                ) from None
            problems.append(exc.strerror or str(exc))
    if len(problems) == len(addresses):
        raise StartupError(f"cannot listen on {host}:{port} ({flags}): {problems[0]}")


#: Bytes a Rerank answer may hold per document beyond its request's: a result's index, score and
#: chunk, and their framing (at most 45).
RESULT_OVERHEAD_BYTES = 64
#: The answers' size limit never drops below gRPC's usual 64 MiB, nor exceeds what it can hold.
MIN_SEND_BYTES = 64 * 1024 * 1024
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1


def max_send_bytes(settings: Settings) -> int:
    """The size limit of answers: one to a request at ``--max-message-bytes`` must go out, and
    with ``return_documents`` it holds every text the request did, ids too, plus each result's
    index, score and chunk, the model's name and the usage (64 KiB covers those two)."""
    overhead = settings.max_documents * RESULT_OVERHEAD_BYTES + 64 * 1024
    return min(GRPC_MAX_MESSAGE_BYTES, max(MIN_SEND_BYTES, settings.max_message_bytes + overhead))


LIVENESS_SERVICE = "rerankd.v1.Liveness"
READINESS_SERVICES = ("", SERVICE_NAME)
#: gRPC core's default for calls waiting to be taken in, past which it drops them all.
CORE_PENDING_HARD_LIMIT = 3000


#: How long a drain waits at least for Watch streams to send NOT_SERVING before it drops the
#: rest (those whose client does not read: their write waits on flow control for as long as
#: they like). They also have the time the accepted calls take to finish.
WATCH_DRAIN_SECONDS = 2.0


class _HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 with readiness ("" and the rerank service) apart from liveness.

    Readiness turns NOT_SERVING on drain; liveness (``rerankd.v1.Liveness``) stays SERVING
    while the process is alive, so a liveness probe never kills a draining pod. Setting a
    status never waits: each Watch stream has its own wake-up and writes on its own, so a
    client that never reads stalls only its own stream (the stock servicer writes holding a
    lock that ``set`` needs). Watch streams end once draining has told them the last status,
    and those not told by the time the accepted calls are done (and ``WATCH_DRAIN_SECONDS``
    more, within the grace period) are dropped: the stock servicer
    keeps them open forever, and a single watcher would hold a draining server for its whole
    grace period.
    """

    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._wakeups: dict[str, set[asyncio.Event]] = {}
        self._watches: set[asyncio.Task[Any]] = set()
        self._draining = False

    async def Check(self, request: Any, context: Any) -> Any:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown service {logs.shown(request.service)}"
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: Any, context: Any) -> Any:
        """Every service's status (the stock servicer leaves this out: each call was an ERROR
        traceback in the log and UNIMPLEMENTED)."""
        statuses = {
            name: health_pb2.HealthCheckResponse(status=s) for name, s in self._status.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)

    async def Watch(self, request: Any, context: Any) -> None:
        """Send the service's status, then each change, until the drain."""
        task = asyncio.current_task()
        assert task is not None  # handlers always run in a task
        service, wakeup = request.service, asyncio.Event()
        self._wakeups.setdefault(service, set()).add(wakeup)
        self._watches.add(task)
        sent = None
        try:
            while True:
                wakeup.clear()  # before reading: a change made while writing wakes it again
                status = self._status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                if status != sent:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    sent = status
                if self._draining:
                    return
                await wakeup.wait()
        finally:
            self._watches.discard(task)
            watchers = self._wakeups[service]
            watchers.discard(wakeup)
            if not watchers:
                del self._wakeups[service]

    def set(self, service: str, status: int) -> None:
        """Set a service's status and wake its watchers (without waiting for any of them)."""
        self._status[service] = status
        for wakeup in self._wakeups.get(service, ()):
            wakeup.set()

    def set_ready(self, ready: bool) -> None:
        if self._draining:
            return
        status = health_pb2.HealthCheckResponse.SERVING if ready else _NOT_SERVING
        for name in READINESS_SERVICES:
            self.set(name, status)

    def drain(self) -> None:
        """Report NOT_SERVING on readiness and tell the Watch streams to end once told so."""
        self.set_ready(False)
        self._draining = True
        for watchers in self._wakeups.values():
            for wakeup in watchers:
                wakeup.set()

    async def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the Watch streams to end, then drop the rest."""
        if not self._watches:
            return
        _, stuck = await asyncio.wait(list(self._watches), timeout=timeout)
        for task in stuck:  # ends the handler as cancelled: gRPC drops the call quietly
            task.cancel()


_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Sidecar:
    """The server and its model; ``async with Sidecar(settings) as s: await s.ready()``."""

    def __init__(self, settings: Settings, scorer_factory: ScorerFactory = load_hf_scorer) -> None:
        self.settings = settings
        self._factory = scorer_factory
        self._servicer = RerankServicer(settings)
        self._server: grpc.aio.Server | None = None
        self._health: _HealthServicer | None = None
        self._open_services: OpenServices | None = None
        self._schedulers: list[BatchScheduler] = []
        self._loading: asyncio.Task[None] | None = None
        self.metrics = Metrics()
        self.metrics.held_bytes = lambda: self._servicer.held_bytes
        self.port = 0
        self.metrics_port = 0

    async def __aenter__(self) -> Sidecar:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Listen (NOT_SERVING) and begin loading the model in the background."""
        # grpc.aio objects bind to the running loop, so they are made here, not in __init__.
        settings = self.settings
        tracing.enabled.refresh()
        logs.demote_caller_encoding_errors()
        observe = self.metrics.observe_request if settings.metrics_port else None
        interceptors = []
        if settings.auth_token_file:
            tokens = TokenFile(settings.auth_token_file)
            interceptors.append(BearerTokenInterceptor(tokens, observe))
        pending_calls = max(settings.max_queue_pairs, CORE_PENDING_HARD_LIMIT)
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", max_send_bytes(settings)),
                # Tolerate idle channels behind load balancers: allow client pings every 10 s
                # without calls, and ping idle clients every 60 s to keep NAT/LB state alive.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                # A port in use must fail the bind, never be shared with another process.
                ("grpc.so_reuseport", 0),
                # Calls the event loop has not taken in yet wait in gRPC core, which past 1,000
                # of them drops new ones at random (all past 3,000) with a bare CANCELLED: a
                # burst of a few thousand calls lost 10-20% so, and so does any pause of the
                # loop (a long garbage collection) under a steady stream. Up to the queue bound
                # (and never fewer than core's own hard limit) they reach the handler, which
                # answers each (RESOURCE_EXHAUSTED with a hint when the queue is full).
                ("grpc.server.max_pending_requests", pending_calls),
                ("grpc.server.max_pending_requests_hard_limit", pending_calls),
            ],
        )
        self._health = _HealthServicer()
        self._open_services = OpenServices(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._open_services)
        methods = handlers(self._servicer, observe)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, methods),)
        )
        names = (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflector = reflection.aio.ReflectionServicer(names)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflector, self._open_services)
        self._health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._health.set_ready(False)
        address = f"{settings.host}:{settings.port}"
        check_port_free(settings.host, settings.port, "--host, --port")
        try:
            if settings.tls_cert:
                tls = ReloadingCertificates(
                    settings.tls_cert, settings.tls_key, settings.tls_client_ca
                )
                self.port = self._server.add_secure_port(address, tls.credentials())
            else:
                self.port = self._server.add_insecure_port(address)
        except RuntimeError as exc:  # taken since the check, or an address not of this machine
            raise StartupError(f"cannot listen on {address} (--host, --port): {exc}") from None
        if settings.metrics_port:
            metrics_host = settings.metrics_address
            self.metrics.loop = asyncio.get_running_loop()
            try:
                self.metrics_port = self.metrics.serve(metrics_host, settings.metrics_port)
            except OSError as exc:
                in_use = exc.errno == errno.EADDRINUSE
                raise StartupError(
                    f"cannot serve metrics on {metrics_host}:{settings.metrics_port} "
                    f"(--metrics-host, --metrics-port): "
                    + ("the port is in use" if in_use else str(exc.strerror or exc))
                ) from None
            log.info("metrics on http://%s:%d/metrics", metrics_host, self.metrics_port)
        await self._server.start()
        log.info(
            "listening on %s:%d (event loop: %s); loading %s",
            self.settings.host,
            self.port,
            type(asyncio.get_running_loop()).__module__.partition(".")[0],
            self.settings.model,
        )
        self._loading = asyncio.create_task(self._load(), name="rerankd-load")

    @property
    def scheduler(self) -> BatchScheduler | None:
        """The default model's scheduler once loaded (its ``stats`` and queue depth), else None."""
        return self._schedulers[0] if self._schedulers else None

    async def ready(self) -> None:
        """Wait until the model serves. Raises ModelLoadError when it cannot be loaded."""
        if self._loading is None:
            raise RuntimeError("Sidecar.start() was not called")
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        """Load every model in turn (the default first), then report SERVING."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        cache = (
            ScoreCache(self.settings.score_cache_bytes) if self.settings.score_cache_bytes else None
        )
        self.metrics.cache = cache
        for name, source in self.settings.model_specs():
            settings = dataclasses.replace(
                self.settings, model=source, model_name=name, extra_models=()
            )
            model_thread = model_executor()
            try:
                scorer = await loop.run_in_executor(model_thread, self._factory, settings)
                config = scheduler_config(settings, scorer)
                if settings.warmup:
                    limits = config.limits
                    fixed_cost = await loop.run_in_executor(
                        model_thread, scorer.warmup, limits.max_batch_tokens, limits.max_batch_size
                    )
                    config = scheduler_config(settings, scorer, fixed_cost)
            except BaseException:
                model_thread.shutdown(wait=False)
                raise
            scheduler = BatchScheduler(scorer, config, model_thread)
            self._schedulers.append(scheduler)
            if settings.metrics_port:  # else nothing reads them: no histogram per batch
                self.metrics.watch(scheduler)
            await scheduler.start()
            self._servicer.add_model(Reranker(name, scorer, scheduler, config, cache))
            info = scorer.info
            log.info(
                "serving %s as %r: %s, on %s (%s, %s attention, max %d tokens/pair, "
                "%d tokens/batch, a batch's fixed cost counted as %d tokens, %d tokenizer threads)",
                source,
                name,
                info.modules or "custom scorer",
                info.device,
                info.dtype,
                info.attention_implementation,
                info.max_input_tokens,
                config.limits.max_batch_tokens,
                config.limits.batch_overhead,
                config.tokenizer_threads,
            )
        self.metrics.model_load_seconds.set(loop.time() - started)
        assert self._health is not None  # set in start()
        self._health.set_ready(True)

    async def aclose(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, finish accepted ones within ``grace`` seconds."""
        if self._server is None or self._health is None:
            return
        self._servicer.draining = True
        self._health.drain()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        grace = self.settings.grace_period if grace is None else grace
        if not await self._servicer.drain(grace):
            log.warning("grace period of %.0fs over; cancelling the calls still running", grace)
        await self._health.close(min(grace, WATCH_DRAIN_SECONDS))
        await self._server.stop(0.5)
        if self._loading is not None:
            await asyncio.gather(self._loading, return_exceptions=True)
        for scheduler in self._schedulers:
            await scheduler.aclose()
        self.metrics.close()


async def serve(settings: Settings, scorer_factory: ScorerFactory = load_hf_scorer) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    sidecar = Sidecar(settings, scorer_factory)
    try:
        await sidecar.start()
        ready = asyncio.ensure_future(sidecar.ready())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            ready.result()  # raises ModelLoadError if loading failed
            await stopping
        else:
            ready.cancel()
        log.info("draining (grace period %.0fs)", settings.grace_period)
        return 0
    except (ModelLoadError, StartupError) as exc:
        log.error("%s", exc)
        return 2
    finally:
        await sidecar.aclose()
        for sig in signals:
            loop.remove_signal_handler(sig)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``--event-loop`` names, for ``asyncio.Runner`` (None: asyncio's own).
    uvloop spends less of the loop's time on each call (docs/design.md, "The event loop");
    ``auto`` takes it where it is installed. Raises StartupError for ``uvloop`` without it."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise StartupError(
                "--event-loop uvloop, but uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rerankd serve`` and ``python -m rerankd_server``."""
    settings = parse_settings(argv)
    logs.configure(settings.log_level, settings.log_format)
    try:
        factory = loop_factory(settings.event_loop)
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(settings))
