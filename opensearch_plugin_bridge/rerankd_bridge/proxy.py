"""``rerankd bridge``: a transparent HTTP proxy in front of OpenSearch or Elasticsearch.

Every request passes through unchanged (method, path, query string, headers, body and its
``Content-Encoding``, status), except ``_search`` and ``_msearch`` requests that ask for
reranking, by an ``ext.rerank`` block in the body (see :mod:`rerankd_bridge.spec`) or by a
per-index entry in ``--config``. Those are sent on with ``ext.rerank`` removed and from/size
widened to the rank window, and come back reranked with a ``"rerank"`` block (and an
``X-Rerankd-Rerank`` header naming its status), compressed as the request's
``Accept-Encoding`` allows. Any application in any language gets reranked results by
changing only its URL.

A search paged in the engine's order (``scroll``, ``search_after``, a sort other than by score)
is not reranked: it goes to the engine as it came when only ``--config`` asks for reranking,
and is refused when ``ext.rerank`` does. ``filter_path`` is applied to the bridge's answer, not
sent on (the engine must send whole hits to rerank).

The bridge's own errors are in the engine's error shape: a client's mistake (a bad
``ext.rerank``, from/size, ``_msearch`` header, ``ext.rerank`` with a sort or cursor) 400, a
compressed body inflating past the limit 413, an engine that is unreachable or answers a search
with something that is not a search response 502, a fault of the bridge itself 500. A body the
bridge cannot read as JSON goes to the engine as it came.

The same server answers the rerank endpoints of :mod:`rerankd_bridge.endpoints` (Cohere
``/v1/rerank`` and ``/v2/rerank``, Elasticsearch ``/_inference/...``, TEI ``/rerank``,
``/info``, ``/health``) and serves its counters at ``GET /_rerankd/metrics``. Without
``--engine`` it serves only those. The sidecar is reached with the connection options every
rerankd command shares (:mod:`rerankd.connection`: target, TLS, token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiDict
from yarl import URL

from rerankd import AsyncClient
from rerankd.connection import Connection, OptionError
from rerankd.connection import add_arguments as add_connection_arguments
from rerankd_bridge import endpoints
from rerankd_bridge.endpoints import reply
from rerankd_bridge.filter_path import apply_filter_path
from rerankd_bridge.ranking import RerankOptions
from rerankd_bridge.search import (
    BadEngineResponse,
    RerankFailed,
    SearchJob,
    rerank_async,
    rerank_conflict,
    search_response,
)
from rerankd_bridge.spec import BridgeConfig, QuerySource, RerankSpec
from rerankd_bridge.stats import STATS, RerankStats
from rerankd_bridge.text import as_mapping
from rerankd_bridge.wire import BodyTooLarge, error_body, inflate, loads

__all__ = ["Bridge", "ProxySettings", "main"]

log = logging.getLogger("rerankd_bridge.proxy")

# Headers that describe one hop, not the message (RFC 9110 section 7.6.1), plus those aiohttp
# computes itself for the bytes it sends, and ``Expect``: the bridge has read the whole body
# already, and an engine session told to wait for a 100 that never comes would hang.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "expect",
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
# The longest request line and header field taken and passed on: the engines take 16 KiB of
# headers by default (a SAML or bearer token is long), aiohttp's own bound is 8 KiB.
_MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class ProxySettings:
    """Everything the proxy is configured with (see ``main --help`` for each).

    ``reranker`` is the sidecar and how to reach it (target, TLS, token: the connection
    options every rerankd command shares). ``timeout`` is the deadline of the rerank
    endpoints and of the gRPC channel's calls by default; a search's own deadline is its
    spec's ``timeout`` (``config`` defaults, then ``ext.rerank.timeout_ms``). The command
    line sets both from ``--timeout-ms``.
    """

    engine: str | None
    reranker: Connection = field(default_factory=Connection)
    host: str = "127.0.0.1"
    port: int = 9201
    config: BridgeConfig = field(default_factory=BridgeConfig)
    rerank_api: bool = True
    timeout: float = 2.0
    max_body_bytes: int = 100 * 1024 * 1024


class _EngineFault(Exception):
    """The engine's answer cannot be used: the proxy answers 502."""


class Bridge:
    """The proxy server; ``async with Bridge(settings)`` starts it and ``port`` says where.

    Raises rerankd.connection.OptionError on start when the connection options cannot be
    used (an unreadable certificate or token file).
    """

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
        """Open the reranker channel and the engine session, then listen."""
        self._reranker = self.settings.reranker.async_client(timeout=self.settings.timeout)
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            max_line_size=_MAX_HEADER_BYTES,
            max_field_size=_MAX_HEADER_BYTES,
        )
        try:
            await self._listen()
        except BaseException:  # a port in use: nothing may be left open
            await self.aclose()
            raise

    async def _listen(self) -> None:
        settings = self.settings
        app = web.Application(client_max_size=settings.max_body_bytes)
        app.router.add_get("/_rerankd/metrics", self._metrics)
        if settings.rerank_api:
            endpoints.add_routes(
                app, self.reranker, settings.timeout, settings.max_body_bytes, self._proxy
            )
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        # Bodies stay as sent (compressed ones too), so what is forwarded is what came in.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            auto_decompress=False,
            max_line_size=_MAX_HEADER_BYTES,
            max_field_size=_MAX_HEADER_BYTES,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.host, settings.port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        if server is not None and settings.port == 0:
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
            return _error(request, 404, "resource_not_found_exception", "no --engine")
        raw = await request.read()
        segments = [s for s in request.path.split("/") if s]
        endpoint = segments[-1] if segments and len(segments) <= 2 else ""
        index = segments[0] if len(segments) == 2 else None
        if request.method in ("GET", "POST") and endpoint in ("_search", "_msearch"):
            encoding = request.headers.get("Content-Encoding", "")
            try:
                body = inflate(raw, encoding, self.settings.max_body_bytes)
            except BodyTooLarge as err:
                return _error(request, 413, "illegal_argument_exception", str(err))
            if body == b"" and "source" in request.query:  # the body in the query string
                body = request.query["source"].encode()
            text = _utf8(body)
            if text is not None:  # else not ours to read: the engine answers as it would
                search = self._search if endpoint == "_search" else self._msearch
                try:
                    answer = await search(request, text, index)
                except _BadSearch as err:
                    return _error(request, 400, "illegal_argument_exception", str(err))
                except _EngineFault as err:
                    return _error(request, 502, "engine_response_exception", str(err))
                except Exception:  # a bug of the bridge: an engine-shaped error, not a page
                    log.exception("reranking %s %s failed", request.method, request.path)
                    reason = "the rerankd bridge failed; see its log"
                    return _error(request, 500, "rerank_bridge_exception", reason)
                if answer is not None:
                    return answer
        return await self._forward(request, request.url.raw_path_qs, raw, request.headers)

    async def _search(
        self, request: web.Request, text: str, index: str | None
    ) -> web.StreamResponse | None:
        body = _json_object(text)
        if body is None:
            return None
        with _client_mistakes():
            params = MultiDict(request.query)
            spec = self._spec(index, body, params)
            if spec is None:
                return None
            paths = _pop_filter_path(params)
            for name in ("from", "size"):
                if name in params:
                    body[name] = _int_param(params.popall(name)[-1], name)
            if "q" in params and spec.query == QuerySource():
                spec = RerankSpec(spec.options, QuerySource(text=params["q"]))
            job = SearchJob.prepare(body, spec, self.stats)
        status, headers, payload = await self._send(request, params, [job.engine_body()])
        if status != 200:
            return _response(status, headers, payload)
        response = _engine_search(_engine_json(payload, headers, self.settings.max_body_bytes))
        answer = await self._finish(job, response)
        if "error" in answer and "status" in answer:
            return reply(request, answer["status"], answer, _answer_headers(headers))
        out = _answer_headers(headers)
        out["X-Rerankd-Rerank"] = str(answer["rerank"]["status"])
        return reply(request, 200, apply_filter_path(answer, paths), out)

    async def _msearch(
        self, request: web.Request, text: str, index: str | None
    ) -> web.StreamResponse | None:
        # An empty line is an empty header (the engines read it so); only the last newline
        # ends the body rather than a line.
        lines = text.split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        if len(lines) % 2:
            return None
        jobs: dict[int, SearchJob] = {}
        bodies: list[Any] = []
        for i in range(0, len(lines), 2):
            header, body = _json_object(lines[i]), _json_object(lines[i + 1])
            if header is None or body is None:
                return None
            with _client_mistakes():
                target = _msearch_index(header.get("index", index))
                spec = self._spec(target, body, request.query)
                if spec is None:
                    bodies += [header, lines[i + 1]]
                    continue
                job = SearchJob.prepare(body, spec, self.stats)
            jobs[i // 2] = job
            bodies += [header, job.engine_body()]
        if not jobs:
            return None
        params = MultiDict(request.query)
        paths = _pop_filter_path(params)
        status, headers, payload = await self._send(request, params, bodies)
        if status != 200:
            return _response(status, headers, payload)
        answer = _engine_json(payload, headers, self.settings.max_body_bytes)
        responses = answer.get("responses") if isinstance(answer, Mapping) else None
        if not isinstance(responses, list):
            raise _EngineFault("the engine's _msearch answer has no list of responses")
        done = await asyncio.gather(
            *(self._finish_item(job, responses[i]) for i, job in jobs.items() if _ok(responses, i))
        )
        for i, item in zip([i for i in jobs if _ok(responses, i)], done, strict=True):
            responses[i] = item
        return reply(request, 200, apply_filter_path(answer, paths), _answer_headers(headers))

    def _spec(
        self, index: str | None, body: Mapping[str, Any], params: Mapping[str, str]
    ) -> RerankSpec | None:
        """How to rerank a search (one ``_msearch`` item) of ``index``; None when it is the
        engine's: nothing asks for reranking, it names a search pipeline (whose own rerank
        processor reads ``ext.rerank``), or only ``--config`` asks and it pages in the
        engine's order. ValueError for ``ext.rerank`` with a sort or cursor."""
        ext = as_mapping(body.get("ext")).get("rerank")
        spec = self.settings.config.spec_for(index, ext)
        if spec is None or _engine_pipeline(body, params):
            return None
        conflict = rerank_conflict(body, params)
        if conflict is None:
            return spec
        if ext is None:  # reranked by --config only: the engine pages it as it would
            return None
        raise ValueError(f"ext.rerank cannot be combined with {conflict}")

    async def _finish(self, job: SearchJob, response: dict[str, Any]) -> dict[str, Any]:
        """Rerank one engine answer; a strict failure becomes an engine-style error object."""
        try:
            return await rerank_async(job, response, self.reranker())
        except RerankFailed as err:
            return error_body(err.http_status, "rerank_exception", str(err))

    async def _finish_item(self, job: SearchJob, item: Any) -> dict[str, Any]:
        """:meth:`_finish` for one ``_msearch`` response; an unusable one becomes an error."""
        try:
            response = search_response(item)
        except BadEngineResponse as err:
            return error_body(502, "engine_response_exception", str(err))
        return await self._finish(job, response)

    async def _send(
        self, request: web.Request, params: MultiDict[str], bodies: list[Any]
    ) -> tuple[int, CIMultiDict[str], bytes]:
        """Send a rewritten search (one JSON body, or NDJSON lines) to the engine, uncompressed,
        as a body (one given in the query string, ``source``, is in it now)."""
        lines = [b if isinstance(b, str) else json.dumps(b) for b in bodies]
        data = (lines[0] if len(lines) == 1 else "\n".join(lines) + "\n").encode()
        headers = _forwardable(request.headers)
        headers.popall("Content-Encoding", None)
        headers["Accept-Encoding"] = "identity"
        # A body without a Content-Type is refused (406): a search sent without one gets one.
        headers.setdefault(
            "Content-Type", "application/x-ndjson" if len(lines) > 1 else "application/json"
        )
        for name in ("source", "source_content_type"):
            params.popall(name, None)
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
            body = error_body(502, "engine_unreachable", f"{url.origin()}: {err}")
            return 502, CIMultiDict({"Content-Type": "application/json"}), json.dumps(body).encode()


class _BadSearch(ValueError):
    """A search the bridge must refuse (400): a bad ext.rerank, from/size, index, ..."""


@contextmanager
def _client_mistakes() -> Iterator[None]:
    """Turn the ValueError of reading a client's search into :class:`_BadSearch`."""
    try:
        yield
    except _BadSearch:
        raise
    except ValueError as err:
        raise _BadSearch(str(err)) from err


def _ok(responses: list[Any], i: int) -> bool:
    item = responses[i] if i < len(responses) else None
    return isinstance(item, dict) and "error" not in item and item.get("status", 200) == 200


def _engine_json(payload: bytes, headers: Mapping[str, str], limit: int) -> Any:
    """The engine's JSON answer, decoded from any content encoding it used anyway."""
    try:
        data = inflate(payload, headers.get("Content-Encoding", ""), limit)
        if data is None:
            raise ValueError(f"Content-Encoding {headers.get('Content-Encoding')!r}")
        return loads(data)
    except ValueError as err:
        raise _EngineFault(f"the engine's answer is not JSON ({err})") from None


def _engine_search(value: Any) -> dict[str, Any]:
    try:
        return search_response(value)
    except BadEngineResponse as err:
        raise _EngineFault(str(err)) from None


def _utf8(body: bytes | None) -> str | None:
    """A search body's text; None when it is not UTF-8 (the engine refuses it, as it would)."""
    try:
        return None if body is None else body.decode()
    except UnicodeDecodeError:
        return None


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = loads(text) if text.strip() else {}
    except ValueError:
        return None  # not ours to judge: the engine answers with its own error
    return value if isinstance(value, dict) else None


def _msearch_index(value: Any) -> str | None:
    """An ``_msearch`` header's ``index``: a name, names or absent, as one index expression."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise ValueError(f"an _msearch header's index must be a string or strings, not {value!r}")


def _engine_pipeline(body: Mapping[str, Any], params: Mapping[str, str]) -> bool:
    """Whether a search names an OpenSearch search pipeline (``?search_pipeline=``, or one
    defined in the body), whose processors, a rerank processor among them, are the engine's to
    run: ``ext.rerank`` is then theirs, and the search goes through untouched."""
    named = params.get("search_pipeline", "_none") not in ("", "_none")
    return named or "search_pipeline" in body


def _pop_filter_path(params: MultiDict[str]) -> str:
    """Take ``filter_path`` off a reranked search's query string, to apply to the answer."""
    return ",".join(params.popall("filter_path", []))


def _int_param(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {value!r}") from None


def _forwardable(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HOP_BY_HOP)


def _answer_headers(upstream: Mapping[str, str]) -> CIMultiDict[str]:
    """The engine's headers for an answer the bridge rewrote (and encodes itself)."""
    out = _forwardable(upstream)
    out.popall("Content-Encoding", None)
    return out


def _response(status: int, headers: Mapping[str, str], payload: bytes) -> web.Response:
    return web.Response(status=status, body=payload, headers=_forwardable(headers))


def _error(request: web.Request, status: int, kind: str, reason: str) -> web.Response:
    return reply(request, status, error_body(status, kind, reason))


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
    add_connection_arguments(
        parser, target_flags=("--target", "--reranker"), target_help="the rerankd sidecar"
    )
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
        help="Default reranker deadline (at most 600000); past it searches fall back to "
        "first-stage order. Longer waits for slow rerankers, shorter bounds the added latency.",
    )
    parser.add_argument(
        "--no-rerank-api",
        action="store_true",
        help="Do not serve the rerank endpoints (/v1/rerank, /v2/rerank, /_inference/..., "
        "/rerank, /info, /health); forward those paths to the engine instead.",
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
    timeout = args.timeout_ms / 1000
    try:
        base = RerankSpec(RerankOptions(timeout=timeout))
    except ValueError as err:
        parser.error(f"--timeout-ms {args.timeout_ms}: {err}")
    try:
        config = BridgeConfig.load(args.config, base) if args.config else BridgeConfig(base)
    except (OSError, ValueError) as err:
        parser.error(f"--config {args.config}: {err}")
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    return ProxySettings(
        engine=args.engine,
        reranker=Connection.from_args(args),
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
                f"(engine {settings.engine or 'none'}, reranker {settings.reranker.target})",
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
    except OptionError as err:  # e.g. an unreadable --tls-ca or --token-file
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
