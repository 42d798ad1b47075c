"""Real servers on loopback for the bridge tests: two engines and rerankd sidecars.

``osmem-server`` speaks the OpenSearch REST API and ``noida-db`` the Elasticsearch one; both
are started here as subprocesses on free ports and stopped at the end of the session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import struct
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from osmem_server import OsmemServer

from rerankd_bridge.proxy import Bridge, ProxySettings
from rerankd_bridge.stats import RerankStats
from rerankd_server.process import free_port
from rerankd_server.settings import Settings
from support.fake_scorer import FakeScorer
from support.sidecar import RunningSidecar, run_sidecar

# Man-page-like documents, so the tests run where ../shared is absent.
SMALL_CORPUS: dict[str, str] = {
    "ls": "ls lists directory contents: files and directories, sorted by name",
    "cp": "cp copies files and directories from a source to a destination",
    "mv": "mv moves or renames files and directories",
    "rm": "rm removes files or directories; use with care",
    "du": "du estimates file space usage of files and directories",
    "df": "df reports file system disk space usage",
    "find": "find searches for files in a directory hierarchy",
    "grep": "grep prints lines that match patterns in files",
    "cat": "cat concatenates files and prints them on standard output",
    "tar": "tar is an archiving utility that stores files in an archive",
    "chmod": "chmod changes file mode bits, the permissions of files",
    "mkdir": "mkdir makes directories",
}


@dataclass(frozen=True)
class Engine:
    """A running search engine: its flavour and base URL."""

    flavour: str  # "opensearch" or "elasticsearch"
    url: str

    def request(self, method: str, path: str, body: Any = None, ndjson: str | None = None) -> Any:
        """One JSON request to the engine, decoded; raises on an error status."""
        data = ndjson.encode() if ndjson is not None else None
        if body is not None:
            data = json.dumps(body).encode()
        kind = "application/x-ndjson" if ndjson is not None else "application/json"
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": kind}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"null")

    def index_corpus(self, index: str, docs: dict[str, str]) -> None:
        """Create ``index`` (``text`` as a text field) and bulk-index ``docs``, refreshed."""
        self.request("PUT", f"/{index}", {"mappings": {"properties": {"text": {"type": "text"}}}})
        lines = []
        for doc_id, text in docs.items():
            lines.append(json.dumps({"index": {"_index": index, "_id": doc_id}}))
            lines.append(json.dumps({"text": text, "title": doc_id}))
        for start in range(0, len(lines), 4000):
            chunk = "\n".join(lines[start : start + 4000]) + "\n"
            self.request("POST", "/_bulk", ndjson=chunk)
        self.request("POST", f"/{index}/_refresh")


@contextmanager
def osmem(index: str, docs: dict[str, str]) -> Iterator[Engine]:
    """A fresh osmem-server (OpenSearch API) with ``docs`` indexed in ``index``."""
    server = OsmemServer.start(addr="127.0.0.1:0", japanese=False)
    try:
        engine = Engine("opensearch", server.url)
        engine.index_corpus(index, docs)
        yield engine
    finally:
        server.close()
        for stream in (server.process.stdin, server.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="session")
def opensearch() -> Iterator[Engine]:
    """osmem-server (OpenSearch API), with the small corpus in index ``small``."""
    with osmem("small", SMALL_CORPUS) as engine:
        yield engine


@pytest.fixture(scope="session")
def elasticsearch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """noida-db's Elasticsearch service, with the small corpus in index ``small``."""
    binary = str(files("noida_db").joinpath("noida-db"))
    port = free_port()
    data = tmp_path_factory.mktemp("noida")
    argv = [binary, "start", "--data-dir", str(data), "--only", "elasticsearch"]
    proc = subprocess.Popen(
        [*argv, "--elasticsearch-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    output: list[str] = []

    def watch() -> None:  # the banner line that names the URL means it is listening
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if f"127.0.0.1:{port}" in line:
                ready.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        if not ready.wait(30):
            pytest.fail(f"noida-db did not start: {''.join(output)}")
        engine = Engine("elasticsearch", f"http://127.0.0.1:{port}")
        engine.index_corpus("small", SMALL_CORPUS)
        yield engine
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        watcher.join(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(params=["opensearch", "elasticsearch"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn."""
    found: Engine = request.getfixturevalue(request.param)
    return found


@pytest.fixture(scope="session")
def tiny_sidecar(tiny_models: dict[str, Path]) -> Iterator[RunningSidecar]:
    """A real rerankd with the tiny ModernBERT model (random weights)."""
    with run_sidecar(Settings(model=str(tiny_models["modernbert"]), device="cpu")) as running:
        yield running


@dataclass
class SignallingScorer(FakeScorer):
    """FakeScorer that sets ``entered`` when the model thread takes a batch."""

    entered: threading.Event = field(default_factory=threading.Event)

    def forward(self, batch: Any) -> Any:
        self.entered.set()
        return super().forward(batch)


@dataclass
class FakeSidecar:
    running: RunningSidecar
    scorer: SignallingScorer

    @property
    def target(self) -> str:
        return self.running.target


@pytest.fixture
def fake_sidecar() -> Iterator[FakeSidecar]:
    """A rerankd with the deterministic fake model admitting 12 pairs; ``scorer.gate`` holds
    the model thread."""
    scorer = SignallingScorer()
    settings = Settings(model="fake", warmup=False, max_queue_pairs=12, max_documents=12)
    with run_sidecar(settings, lambda _: scorer) as running:
        try:
            yield FakeSidecar(running, scorer)
        finally:
            scorer.gate.set()


def dead_target() -> str:
    """A loopback target where nothing listens (a reranker that is down)."""
    return f"127.0.0.1:{free_port()}"


@contextmanager
def run_bridge(settings: ProxySettings, stats: RerankStats | None = None) -> Iterator[str]:
    """A Bridge on a free port and its own event loop thread, for blocking clients (SDKs);
    yields its base URL and stops it on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bridge-loop", daemon=True)
    thread.start()
    bridge = Bridge(dataclasses.replace(settings, port=0), stats or RerankStats())
    try:
        asyncio.run_coroutine_threadsafe(bridge.start(), loop).result(30)
        yield f"http://127.0.0.1:{bridge.port}"
    finally:
        asyncio.run_coroutine_threadsafe(bridge.aclose(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


JSON_SMART_DOUBLE_LIMIT = 18  # json-smart reads a longer number literal as BigDecimal


def float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


class NumberLiteral(str):
    """A number as it was written in a JSON text."""


def number_literals(raw: bytes, names: set[str]) -> list[str]:
    """The literal text of every number under a key in ``names``, in document order."""
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        found.extend(v for k, v in items if k in names and isinstance(v, NumberLiteral))
        return dict(items)

    json.loads(raw, object_pairs_hook=pairs, parse_float=NumberLiteral, parse_int=NumberLiteral)
    return found
