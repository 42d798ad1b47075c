"""Servers under test, each in its own process so the load generator does not share its GIL.

``RerankdProcess`` runs rerankd's in-process ``Sidecar`` in a child process (multiprocessing,
spawn) with a bench scorer, and answers ``stats()`` over a pipe with the scheduler's counters
and the model thread's busy time. ``InfinityProcess`` runs infinity-emb from its own virtual
environment. Both expose an async ``send(query, docs, timeout)`` for the load drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

INFINITY_PYTHON = Path(os.environ.get("BENCH_INFINITY_VENV", "/tmp/infinity-venv")) / "bin/python"


@dataclass(frozen=True)
class ScorerSpec:
    """Which scorer the server process builds (picklable, unlike a factory closure)."""

    kind: str  # "hf", "noop" or "sim"
    sim_pairs_per_s: float = 0.0  # "sim": the simulated device's rate; 0 = free device
    sim_padded: bool = False
    tokenizer_model: str = ""  # "sim": the model folder whose tokenizer is used
    #: Answer every call with zero scores without the scheduler: what gRPC and the servicer
    #: cost alone, the layer below rerankd's whole path (the ``grpc`` scenario's ``--layers``).
    no_scheduler: bool = False


@dataclass(frozen=True)
class ServerStats:
    """What one measured interval cost the server."""

    batches: int
    pairs_scored: int
    real_tokens: int
    computed_tokens: int
    pairs_cancelled: int
    pairs_expired: int
    busy_s: float
    #: CPU seconds by thread, as ``_thread_cpu`` groups them.
    loop_cpu_s: float = 0.0
    tokenize_cpu_s: float = 0.0
    model_cpu_s: float = 0.0
    native_cpu_s: float = 0.0
    grpc_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    loop_kernel_cpu_s: float = 0.0  # the event loop's share in the kernel

    @property
    def thread_cpu_s(self) -> tuple[float, ...]:
        """CPU seconds by thread: event loop, tokenizer threads, model thread, native pools,
        gRPC core, the rest."""
        return (
            self.loop_cpu_s,
            self.tokenize_cpu_s,
            self.model_cpu_s,
            self.native_cpu_s,
            self.grpc_cpu_s,
            self.other_cpu_s,
        )

    @property
    def cpu_s(self) -> float:
        """The server's CPU seconds, all threads."""
        return sum(self.thread_cpu_s)

    def minus(self, earlier: ServerStats) -> ServerStats:
        """Counters accrued since ``earlier``."""
        return ServerStats(
            *(getattr(self, f) - getattr(earlier, f) for f in self.__dataclass_fields__)
        )

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.computed_tokens if self.computed_tokens else float("nan")


def _thread_cpu() -> tuple[float, ...]:
    """CPU seconds of this process by thread (Linux's per-thread counters; zeros where they
    are missing): the event loop, the tokenizer pool's Python threads, the model thread,
    native pools that are no Python thread (the tokenizers library's Rust threads, torch's),
    gRPC core's threads, the rest (the preparation thread, Python's default executor), and
    last the event loop's time in the kernel (part of the first)."""
    import os
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    kinds = {"MainThread": 0, "rerankd-tokenize": 1, "rerankd-model": 2}
    python = {t.native_id: kinds.get(t.name.rsplit("_", 1)[0], 5) for t in threading.enumerate()}
    totals = [0.0] * 7
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                folder = Path(f"/proc/self/task/{task}")
                fields = (folder / "stat").read_text().rsplit(")", 1)[1].split()
                native = 3 if (folder / "comm").read_text().strip() == "python" else 4
                kind = python.get(int(task), native)
                totals[kind] += (int(fields[11]) + int(fields[12])) / tick
                totals[6] += int(fields[12]) / tick if kind == 0 else 0.0
    return tuple(totals)


def _build_scorer(settings: Any, spec: ScorerSpec) -> Any:
    from bench.scorers import DeviceModel, NoopScorer, SimulatedGpu, Timed
    from rerankd_server.app import load_hf_scorer
    from rerankd_server.scoring.hf import HFCrossEncoder, Placement

    if spec.kind == "noop":
        return Timed(NoopScorer())
    if spec.kind == "sim":
        real = HFCrossEncoder(spec.tokenizer_model, Placement("cpu", "float32", "sdpa"))
        if spec.sim_pairs_per_s <= 0:
            device = DeviceModel(0.0, 0.0, spec.sim_padded)
        else:
            device = DeviceModel.calibrated(spec.sim_pairs_per_s, spec.sim_padded)
        return Timed(SimulatedGpu(real, device))
    return Timed(load_hf_scorer(settings))


def _child(conn: Connection, settings_kwargs: dict[str, Any], spec: ScorerSpec) -> None:
    from rerankd_server import app, logs

    logs.configure("WARNING", "text")  # as the CLI's: no progress bars in the bench's output
    factory = app.loop_factory(settings_kwargs.get("event_loop", "auto"))  # as the CLI's
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_child_main(conn, settings_kwargs, spec))


async def _child_main(conn: Connection, settings_kwargs: dict[str, Any], spec: ScorerSpec) -> None:
    from rerankd_server.app import Sidecar
    from rerankd_server.settings import Settings

    holder: dict[str, Any] = {}

    def factory(settings: Settings) -> Any:
        holder["scorer"] = _build_scorer(settings, spec)
        return holder["scorer"]

    known = {f.name for f in dataclasses.fields(Settings)}
    if "score_cache_bytes" in known:  # a cache would answer repeated pairs without the model
        settings_kwargs = {**settings_kwargs, "score_cache_bytes": 0}
    settings = Settings(
        host="127.0.0.1", port=0, **{k: v for k, v in settings_kwargs.items() if k in known}
    )
    sidecar = Sidecar(settings, factory)
    await sidecar.start()
    await sidecar.ready()
    if spec.no_scheduler:
        _bypass(_scheduler(sidecar))
    loop = asyncio.get_running_loop()
    limits = _scheduler(sidecar)._config.limits
    info = holder["scorer"].info
    print(
        f"rerankd: {info.device}, {info.dtype}, {info.attention_implementation}; budget "
        f"{limits.max_batch_tokens} tokens, a batch's fixed cost {limits.batch_overhead} tokens",
        flush=True,
    )
    conn.send(("ready", sidecar.port))
    try:
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if isinstance(command, tuple) and command[0] == "busy":
                conn.send(holder["scorer"].busy_between(*command[1:]))
                continue
            if command != "stats":
                break
            stats = _scheduler(sidecar).stats
            scorer = holder["scorer"]
            conn.send(
                ServerStats(
                    stats.batches,
                    stats.pairs_scored,
                    stats.real_tokens,
                    stats.computed_tokens,
                    stats.pairs_cancelled,
                    stats.pairs_expired,
                    scorer.busy_s,
                    *_thread_cpu(),
                )
            )
    finally:
        await sidecar.aclose(grace=0.0)


def _bypass(scheduler: Any) -> None:
    """Make ``scheduler.submit`` answer zero scores at once, without batching or threads."""
    import numpy as np

    from rerankd_server.jobs import Outcome, Usage

    async def submit(pairs: Any, truncation: Any, deadline: float | None = None) -> Outcome:
        zeros = np.zeros(len(pairs), dtype=np.float32)
        return Outcome(zeros, zeros, Usage(len(pairs), 0, 0, 0, 0, scored_pairs=len(pairs)))

    scheduler.submit = submit


def _scheduler(sidecar: Any) -> Any:
    """The default model's scheduler, across the app's versions (property or private field)."""
    scheduler = getattr(sidecar, "scheduler", None)
    if scheduler is None:
        scheduler = sidecar._scheduler  # older app versions
    return scheduler


@dataclass
class RerankdProcess:
    """rerankd in a child process; ``send`` goes through ``rerankd.AsyncClient`` over gRPC."""

    settings: dict[str, Any]
    spec: ScorerSpec = field(default_factory=lambda: ScorerSpec("hf"))
    target: str = ""
    _proc: Any = None
    _conn: Any = None
    _clients: list[Any] = field(default_factory=list)

    def start(self) -> RerankdProcess:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=self._target_function(), args=self._target_args(child), daemon=True
        )
        self._proc.start()
        if not parent.poll(600):
            raise RuntimeError("rerankd did not start within 600 s")
        _, port = parent.recv()
        self._conn = parent
        self.target = f"127.0.0.1:{port}"
        return self

    def _target_function(self) -> Any:
        return _child

    def _target_args(self, child: Connection) -> tuple[Any, ...]:
        return (child, self.settings, self.spec)

    def stats(self) -> ServerStats:
        self._conn.send("stats")
        result: ServerStats = self._conn.recv()
        return result

    def busy_between(self, start: float, end: float) -> float:
        """The model's forward seconds inside ``start``..``end`` (this process's
        ``perf_counter``)."""
        self._conn.send(("busy", start, end))
        result: float = self._conn.recv()
        return result

    def stop(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send("stop")
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
        self._proc = None

    async def open(self, count: int) -> None:
        """One client channel per concurrent caller, created on the running loop."""
        from rerankd import AsyncClient

        self._clients = [AsyncClient(self.target, timeout=None) for _ in range(count)]

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()
        self._clients = []

    async def send(self, slot: int, query: str, docs: list[str], timeout: float | None) -> Any:
        client = self._clients[slot % len(self._clients)]
        return await client.rerank(query, docs, timeout=timeout)


def _floor_child(conn: Connection, event_loop: str) -> None:
    factory = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_floor_main(conn))


async def _floor_main(conn: Connection) -> None:
    """A bare grpc.aio server of rerankd's ``.proto``: each document gets score 0, in order."""
    import grpc

    from rerankd.v1 import rerank_pb2 as pb
    from rerankd.v1 import rerank_pb2_grpc

    class Floor(rerank_pb2_grpc.RerankServiceServicer):  # type: ignore[misc]
        async def Rerank(self, request: Any, context: Any) -> Any:
            results = [pb.RerankResult(index=i) for i in range(len(request.documents))]
            return pb.RerankResponse(results=results, model="floor")

    server = grpc.aio.server()
    rerank_pb2_grpc.add_RerankServiceServicer_to_server(Floor(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    conn.send(("ready", port))
    loop = asyncio.get_running_loop()
    try:
        while await loop.run_in_executor(None, conn.recv) == "stats":
            conn.send(ServerStats(0, 0, 0, 0, 0, 0, 0.0, *_thread_cpu()))
    finally:
        await server.stop(0)


@dataclass
class FloorProcess(RerankdProcess):
    """The raw gRPC floor: a no-op servicer of the same ``.proto`` in a child process (no
    rerankd code on the server side), called through the same client as rerankd, on
    asyncio's own event loop or (``event_loop="uvloop"``) on uvloop."""

    event_loop: str = "asyncio"

    def _target_function(self) -> Any:
        return _floor_child

    def _target_args(self, child: Connection) -> tuple[Any, ...]:
        return (child, self.event_loop)


def infinity_problem() -> str | None:
    """Why infinity-emb cannot be run here, or None when its interpreter exists."""
    if not INFINITY_PYTHON.exists():
        return f"no infinity-emb virtual environment at {INFINITY_PYTHON.parent.parent}"
    probe = subprocess.run(
        [str(INFINITY_PYTHON), "-c", "import infinity_emb, sentence_transformers, torch"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        return "infinity-emb does not import: " + probe.stderr.strip().splitlines()[-1]
    return None


def _infinity_model_folder(model: Path) -> Path:
    """The same weights, with a tokenizer class transformers 4 knows.

    transformers 5 saves ``tokenizer_class: TokenizersBackend``, which the transformers 4 that
    infinity-emb needs cannot load; a sibling folder of symbolic links fixes only that field.
    """
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.get("tokenizer_class") != "TokenizersBackend":
        return model
    out = Path(tempfile.gettempdir()) / f"bench-infinity-{model.name}"
    out.mkdir(exist_ok=True)
    for item in model.iterdir():
        link = out / item.name
        if item.name != "tokenizer_config.json" and not link.exists():
            link.symlink_to(item.resolve())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


@dataclass
class InfinityProcess:
    """infinity-emb ``v2`` serving a local model folder offline; ``send`` POSTs ``/rerank``."""

    model: str
    batch_size: int = 32
    dtype: str = "float32"
    device: str = "cpu"
    target: str = ""
    _proc: Any = None
    _log: Any = None
    _session: Any = None

    def start(self, ready_timeout: float = 600.0) -> InfinityProcess:
        model = _infinity_model_folder(Path(self.model))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        exe = shutil.which("infinity_emb", path=str(INFINITY_PYTHON.parent)) or "infinity_emb"
        argv = [
            exe,
            "v2",
            "--model-id",
            str(model),
            "--served-model-name",
            "bench",
            "--engine",
            "torch",
            "--device",
            self.device,
            "--dtype",
            self.dtype,
            "--batch-size",
            str(self.batch_size),
            "--no-bettertransformer",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "DO_NOT_TRACK": "1",
        }
        self._log = tempfile.NamedTemporaryFile(prefix="infinity-", suffix=".log")  # noqa: SIM115
        self._proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.target = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + ready_timeout
        import urllib.request

        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"infinity-emb exited: {self.output()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.target}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"infinity-emb not ready in {ready_timeout}s: {self.output()[-2000:]}")

    def output(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None

    async def open(self, count: int) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(count, 1) * 2)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    async def send(self, slot: int, query: str, docs: list[str], timeout: float | None) -> Any:
        import aiohttp

        body = {"query": query, "documents": docs, "model": "bench", "return_documents": False}
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with self._session.post(
            f"{self.target}/rerank", json=body, timeout=client_timeout
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"infinity /rerank {resp.status}: {await resp.text()}")
            return await resp.json()
