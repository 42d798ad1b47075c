"""``rerankd bridge`` in front of a secured sidecar: a bearer token, TLS and mutual TLS.

The bridge takes the connection options every rerankd command shares (``--token-file``,
``--tls-ca``, ... and their ``RERANKD_*`` variables); the sidecars here are real rerankd
servers with the deterministic fake model, the certificates made by the tests.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Engine

from rerankd_bridge.proxy import Bridge, main, settings_from_args
from rerankd_bridge.stats import RerankStats
from rerankd_server.settings import Settings
from support.certs import TlsFiles, write_file, write_tls_files
from support.fake_scorer import FakeScorer
from support.sidecar import RunningSidecar, run_sidecar

SEARCH = {
    "query": {"match": {"text": "list files"}},
    "size": 3,
    "ext": {"rerank": {"window": 6, "timeout_ms": 10_000}},
}
TOKEN = "rdk-" + secrets.token_urlsafe(16)


def fake_model(settings: Settings) -> FakeScorer:
    return FakeScorer()


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    # The server's format: blank lines and comments are skipped, on both sides.
    write_file(path, f"# bridge token\n\n{TOKEN}\n".encode())
    return path


@pytest.fixture(scope="module")
def token_sidecar(token_file: Path) -> Iterator[RunningSidecar]:
    settings = Settings(model="fake", warmup=False, auth_token_file=str(token_file))
    with run_sidecar(settings, fake_model) as running:
        yield running


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def mtls_sidecar(tls: TlsFiles) -> Iterator[RunningSidecar]:
    settings = Settings(
        model="fake",
        warmup=False,
        tls_cert=str(tls.server.cert),
        tls_key=str(tls.server.key),
        tls_client_ca=str(tls.ca_cert),
    )
    with run_sidecar(settings, fake_model) as running:
        yield running


async def bridge_for(argv: list[str], engine: Engine) -> AsyncIterator[str]:
    """A bridge from command-line arguments, in front of ``engine``; yields its URL."""
    settings = settings_from_args(["--engine", engine.url, "--listen", "127.0.0.1:0", *argv])
    async with Bridge(settings, RerankStats()) as bridge:
        yield f"http://127.0.0.1:{bridge.port}"


async def search(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.post(url + "/small/_search", json=SEARCH) as r:
        assert r.status == 200
        answer: dict[str, Any] = await r.json()
        return answer


async def cohere(url: str) -> int:
    body = {"query": "list files", "documents": ["ls lists files", "cp copies"]}
    async with aiohttp.ClientSession() as http, http.post(url + "/v1/rerank", json=body) as r:
        return r.status


async def test_a_token_file_reaches_a_token_protected_sidecar(
    opensearch: Engine, token_sidecar: RunningSidecar, token_file: Path
) -> None:
    async for url in bridge_for(["--target", token_sidecar.target], opensearch):
        refused = await search(url)
        assert (refused["rerank"]["status"], refused["rerank"]["reason"]) == (
            "skipped",
            "unauthenticated",
        )
        assert await cohere(url) == 502  # the bridge's credentials, not the caller's mistake
    argv = ["--target", token_sidecar.target, "--token-file", str(token_file)]
    async for url in bridge_for(argv, opensearch):
        assert (await search(url))["rerank"]["status"] == "reranked"
        assert await cohere(url) == 200


async def test_the_token_file_comes_from_the_environment(
    opensearch: Engine,
    token_sidecar: RunningSidecar,
    token_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RERANKD_TARGET", token_sidecar.target)
    monkeypatch.setenv("RERANKD_TOKEN_FILE", str(token_file))
    async for url in bridge_for([], opensearch):
        assert (await search(url))["rerank"]["status"] == "reranked"


async def test_mutual_tls_with_a_server_name(
    opensearch: Engine, mtls_sidecar: RunningSidecar, tls: TlsFiles
) -> None:
    # The certificate names localhost, not the 127.0.0.1 the bridge dials.
    trust = ["--target", mtls_sidecar.target, "--tls-ca", str(tls.ca_cert)]
    trust += ["--tls-server-name", "localhost"]
    async for url in bridge_for(trust, opensearch):
        refused = await search(url)  # no client certificate: the handshake fails
        assert (refused["rerank"]["status"], refused["rerank"]["reason"]) == (
            "skipped",
            "unavailable",
        )
    mutual = [*trust, "--tls-cert", str(tls.client.cert), "--tls-key", str(tls.client.key)]
    async for url in bridge_for(mutual, opensearch):
        assert (await search(url))["rerank"]["status"] == "reranked"
        assert await cohere(url) == 200


async def test_tls_options_come_from_the_environment(
    opensearch: Engine,
    mtls_sidecar: RunningSidecar,
    tls: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "RERANKD_TARGET": f"localhost:{mtls_sidecar.sidecar.port}",
        "RERANKD_TLS_CA": str(tls.ca_cert),
        "RERANKD_TLS_CERT": str(tls.client.cert),
        "RERANKD_TLS_KEY": str(tls.client.key),
    }.items():
        monkeypatch.setenv(name, value)
    async for url in bridge_for([], opensearch):
        assert (await search(url))["rerank"]["status"] == "reranked"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-ca", "/nonexistent/ca.pem"], "cannot read /nonexistent/ca.pem"),
        (["--token-file", "/nonexistent/token"], "cannot read /nonexistent/token"),
        (["--token-file", "/dev/null"], "no token in it"),
        (["--tls-server-name", "x"], "needs TLS"),
    ],
)
def test_unusable_connection_options_exit_2(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--listen", "127.0.0.1:0", *flags]) == 2
    assert message in capsys.readouterr().err
