"""``rerankd bridge``: a transparent HTTP proxy in front of OpenSearch or Elasticsearch.

Every request passes through unchanged (method, path, query string, headers, body, status),
except ``_search`` and ``_msearch`` requests that ask for reranking, by an ``ext.rerank``
block in the body (see :mod:`rerankd_bridge.spec`) or by a per-index entry in ``--config``.
Those are sent on with ``ext.rerank`` removed and from/size widened to the rank window, and
come back reranked with a ``"rerank"`` block (and an ``X-Rerankd-Rerank`` header naming its
status). Any application in any language gets reranked results by changing only its URL.

The same server answers the rerank endpoints of :mod:`rerankd_bridge.endpoints` (Cohere
``/v1/rerank``, Elasticsearch ``/_inference/rerank``, TEI ``/rerank``) and serves its
counters at ``GET /_rerankd/metrics``. Without ``--engine`` it serves only those.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiDict
from yarl import URL

from rerankd import AsyncClient
from rerankd_bridge import endpoints
from rerankd_bridge.ranking import RerankOptions
from rerankd_bridge.search import RerankFailed, SearchJob, rerank_async
from rerankd_bridge.spec import BridgeConfig, QuerySource, RerankSpec
from rerankd_bridge.stats import STATS, RerankStats
from rerankd_bridge.text import as_mapping

__all__ = ["Bridge", "ProxySettings", "main"]

log = logging.getLogger("rerankd_bridge.proxy")

# Headers that describe one hop, not the message (RFC 9110 section 7.6.1), plus those aiohttp
# computes itself for the bytes it sends.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


@dataclass(frozen=True)
class ProxySettings:
    """Everything the proxy is configured with (see ``main --help`` for each).

    ``timeout`` is the deadline of the rerank endpoints and of the gRPC channel's calls by
    default; a search's own deadline is its spec's ``timeout`` (``config`` defaults, then
    ``ext.rerank.timeout_ms``). The command line sets both from ``--timeout-ms``.
    """

    engine: str | None
    reranker: str
    host: str = "127.0.0.1"
    port: int = 9201
    config: BridgeConfig = field(default_factory=BridgeConfig)
    rerank_api: bool = True
    timeout: float = 2.0
    max_body_bytes: int = 100 * 1024 * 1024


class Bridge:
    """The proxy server; ``async with Bridge(settings)`` starts it and ``port`` says where."""

    def __init__(self, settings: ProxySettings, stats: RerankStats = STATS) -> None:
        self.settings = settings
        self.stats = stats
        self.port = settings.port
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._reranker: AsyncClient | None = None

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the engine session and the reranker channel, then listen."""
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        )
        self._reranker = AsyncClient(self.settings.reranker, timeout=self.settings.timeout)
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_get("/_rerankd/metrics", self._metrics)
        if self.settings.rerank_api:
            endpoints.add_routes(app, self.reranker, self.settings.timeout)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        if server is not None and self.settings.port == 0:
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        """Stop listening, then close the engine session and the reranker channel."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        if self._reranker is not None:
            await self._reranker.aclose()

    def reranker(self) -> AsyncClient:
        if self._reranker is None:
            raise RuntimeError("the bridge is not started")
        return self._reranker

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.stats.prometheus(), content_type="text/plain")

    # --- the proxy --------------------------------------------------------------------------

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        if self.settings.engine is None:
            return _error(404, "resource_not_found_exception", "no --engine: rerank endpoints only")
        raw = await request.read()
        segments = [s for s in request.path.split("/") if s]
        endpoint = segments[-1] if segments and len(segments) <= 2 else ""
        index = segments[0] if len(segments) == 2 else None
        if request.method in ("GET", "POST") and endpoint in ("_search", "_msearch"):
            try:
                text = _decoded(raw, request.headers)
                if endpoint == "_search":
                    answer = await self._search(request, text, index)
                else:
                    answer = await self._msearch(request, text, index)
            except ValueError as err:
                return _error(400, "illegal_argument_exception", str(err))
            if answer is not None:
                return answer
        return await self._forward(request, request.url.raw_path_qs, raw, request.headers)

    async def _search(
        self, request: web.Request, text: str, index: str | None
    ) -> web.StreamResponse | None:
        body = _json_object(text)
        if body is None:
            return None
        spec = self.settings.config.spec_for(index, as_mapping(body.get("ext")).get("rerank"))
        if spec is None:
            return None
        params = MultiDict(request.query)
        if "scroll" in params:
            raise ValueError("ext.rerank cannot be combined with scroll")
        for name in ("from", "size"):
            if name in params:
                body[name] = _int_param(params.popall(name)[-1], name)
        if "q" in params and spec.query == QuerySource():
            spec = RerankSpec(spec.options, QuerySource(text=params["q"]))
        job = SearchJob.prepare(body, spec, self.stats)
        upstream = await self._send(request, params, [job.engine_body()])
        status, headers, payload = upstream
        if status != 200:
            return _response(status, headers, payload)
        answer = await self._finish(job, json.loads(payload))
        if "error" in answer and "status" in answer:
            return _json(answer["status"], answer, headers)
        reply = _json(200, answer, headers)
        reply.headers["X-Rerankd-Rerank"] = str(answer["rerank"]["status"])
        return reply

    async def _msearch(
        self, request: web.Request, text: str, index: str | None
    ) -> web.StreamResponse | None:
        lines = [line for line in text.split("\n") if line.strip()]
        if len(lines) % 2:
            return None
        jobs: dict[int, SearchJob] = {}
        bodies: list[Any] = []
        for i in range(0, len(lines), 2):
            header, body = _json_object(lines[i]), _json_object(lines[i + 1])
            if header is None or body is None:
                return None
            target = header.get("index", index)
            target = ",".join(target) if isinstance(target, list) else target
            spec = self.settings.config.spec_for(target, as_mapping(body.get("ext")).get("rerank"))
            if spec is None:
                bodies += [header, lines[i + 1]]
                continue
            job = SearchJob.prepare(body, spec, self.stats)
            jobs[i // 2] = job
            bodies += [header, job.engine_body()]
        if not jobs:
            return None
        status, headers, payload = await self._send(request, MultiDict(request.query), bodies)
        if status != 200:
            return _response(status, headers, payload)
        answer = json.loads(payload)
        responses = answer.get("responses", [])
        done = await asyncio.gather(
            *(self._finish(job, responses[i]) for i, job in jobs.items() if _ok(responses, i))
        )
        for i, item in zip([i for i in jobs if _ok(responses, i)], done, strict=True):
            responses[i] = item
        return _json(200, answer, headers)

    async def _finish(self, job: SearchJob, response: dict[str, Any]) -> dict[str, Any]:
        """Rerank one engine answer; a strict failure becomes an engine-style error object."""
        try:
            return await rerank_async(job, response, self.reranker())
        except RerankFailed as err:
            return _error_body(err.http_status, "rerank_exception", str(err))

    async def _send(
        self, request: web.Request, params: MultiDict[str], bodies: list[Any]
    ) -> tuple[int, CIMultiDict[str], bytes]:
        """Send a rewritten search (one JSON body, or NDJSON lines) to the engine, uncompressed."""
        lines = [b if isinstance(b, str) else json.dumps(b) for b in bodies]
        data = (lines[0] if len(lines) == 1 else "\n".join(lines) + "\n").encode()
        headers = _forwardable(request.headers)
        headers.popall("Content-Encoding", None)
        headers["Accept-Encoding"] = "identity"
        path = str(self.settings.engine).rstrip("/") + request.rel_url.raw_path
        url = URL(path, encoded=True).with_query(params)
        return await self._exchange(request.method, url, data, headers)

    async def _forward(
        self, request: web.Request, path_qs: str, data: bytes, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        url = URL(str(self.settings.engine).rstrip("/") + path_qs, encoded=True)
        status, reply_headers, payload = await self._exchange(
            request.method, url, data, _forwardable(headers)
        )
        return _response(status, reply_headers, payload)

    async def _exchange(
        self, method: str, url: URL, data: bytes, headers: CIMultiDict[str]
    ) -> tuple[int, CIMultiDict[str], bytes]:
        if self._session is None:
            raise RuntimeError("the bridge is not started")
        try:
            async with self._session.request(
                method,
                url,
                data=data or None,
                headers=headers,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type", "Accept"),
                allow_redirects=False,
            ) as upstream:
                return upstream.status, CIMultiDict(upstream.headers), await upstream.read()
        except aiohttp.ClientError as err:
            body = _error_body(502, "engine_unreachable", f"{url.origin()}: {err}")
            return 502, CIMultiDict({"Content-Type": "application/json"}), json.dumps(body).encode()


def _ok(responses: list[Any], i: int) -> bool:
    item = responses[i] if i < len(responses) else None
    return isinstance(item, dict) and "error" not in item and item.get("status", 200) == 200


def _decoded(raw: bytes, headers: Mapping[str, str]) -> str:
    if headers.get("Content-Encoding", "").lower() == "gzip":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return None  # not ours to judge: the engine answers with its own error
    return value if isinstance(value, dict) else None


def _int_param(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {value!r}") from None


def _forwardable(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HOP_BY_HOP)


def _response(status: int, headers: Mapping[str, str], payload: bytes) -> web.Response:
    return web.Response(status=status, body=payload, headers=_forwardable(headers))


def _json(status: int, payload: Any, headers: Mapping[str, str]) -> web.Response:
    out = _forwardable(headers)
    out.popall("Content-Encoding", None)
    out.setdefault("Content-Type", "application/json; charset=UTF-8")
    return web.Response(status=status, body=json.dumps(payload).encode(), headers=out)


def _error_body(status: int, kind: str, reason: str) -> dict[str, Any]:
    """An error in the engines' own shape, so clients raise their usual exceptions."""
    cause = {"type": kind, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


def _error(status: int, kind: str, reason: str) -> web.Response:
    return web.json_response(_error_body(status, kind, reason), status=status)


# --- the command line --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerankd bridge",
        description="Reranking proxy for OpenSearch/Elasticsearch, plus HTTP rerank endpoints.",
    )
    parser.add_argument(
        "--engine",
        help="URL of OpenSearch/Elasticsearch to proxy, e.g. http://localhost:9200; "
        "without it only the rerank endpoints are served.",
    )
    parser.add_argument("--reranker", default="localhost:50051", help="rerankd gRPC target.")
    parser.add_argument(
        "--listen",
        default="127.0.0.1:9201",
        help="HOST:PORT to serve on; 0.0.0.0 exposes the proxy beyond this machine.",
    )
    parser.add_argument(
        "--config",
        help="JSON or TOML file with per-index rerank defaults (see docs/opensearch.md).",
    )
    parser.add_argument(
        "--timeout-ms",
        type=int,
        default=2000,
        help="Default reranker deadline; past it searches fall back to first-stage order. "
        "Longer waits for slow rerankers, shorter bounds the added latency.",
    )
    parser.add_argument(
        "--no-rerank-api",
        action="store_true",
        help="Do not serve /v1/rerank, /rerank and /_inference/rerank (forward them instead).",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    return parser


def settings_from_args(argv: list[str] | None) -> ProxySettings:
    """Parse the command line into settings; exits 2 on bad usage (argparse)."""
    parser = _parser()
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--listen must be HOST:PORT, not {args.listen!r}")
    if args.timeout_ms <= 0:
        parser.error("--timeout-ms must be > 0")
    timeout = args.timeout_ms / 1000
    base = RerankSpec(RerankOptions(timeout=timeout))
    try:
        config = BridgeConfig.load(args.config, base) if args.config else BridgeConfig(base)
    except (OSError, ValueError) as err:
        parser.error(f"--config {args.config}: {err}")
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    return ProxySettings(
        engine=args.engine,
        reranker=args.reranker,
        host=host.strip("[]"),
        port=int(port),
        config=config,
        rerank_api=not args.no_rerank_api,
        timeout=timeout,
    )


async def serve(settings: ProxySettings, stop: asyncio.Event | None = None) -> None:
    """Run the bridge until ``stop`` is set (by default: until SIGTERM or SIGINT)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Bridge(settings) as bridge:
            print(
                f"rerankd bridge listening on http://{settings.host}:{bridge.port} "
                f"(engine {settings.engine or 'none'}, reranker {settings.reranker})",
                flush=True,
            )
            await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    """``rerankd bridge``: run the proxy until SIGTERM/SIGINT; return the exit status."""
    settings = settings_from_args(sys.argv[1:] if argv is None else argv)
    try:
        asyncio.run(serve(settings))
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
