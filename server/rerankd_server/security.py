"""Transport security: TLS / mutual TLS that follows certificate files on disk, and bearer tokens.

Certificates are re-read when their files change (Kubernetes updates mounted secrets in place),
checked on every new connection, so rotation needs no restart. Tokens are compared in constant
time and never logged; health and reflection stay open so probes and tools work unauthenticated,
and what callers can make those open services hold is bounded (``OpenServices``).
"""

from __future__ import annotations

import hmac
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from rerankd_server import logs
from rerankd_server.errors import StartupError
from rerankd_server.metrics import Observer, method_label

log = logging.getLogger(__name__)

#: Services reachable without a token: probes and service discovery.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class _FileWatch:
    """Files whose content is re-read only when one of their mtimes or sizes changes."""

    def __init__(self, *paths: str) -> None:
        self.paths = [Path(p) for p in paths]
        self._stamp: tuple[tuple[float, int], ...] | None = None

    def changed(self) -> bool:
        stamp = tuple((st.st_mtime, st.st_size) for st in (p.stat() for p in self.paths))
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True


class ReloadingCertificates:
    """Server TLS credentials that pick up new certificate files without a restart."""

    def __init__(self, cert: str, key: str, client_ca: str | None = None) -> None:
        files = [cert, key] + ([client_ca] if client_ca else [])
        self._watch = _FileWatch(*files)
        self._cert, self._key, self._client_ca = cert, key, client_ca
        self._lock = threading.Lock()
        self._watch.changed()
        self._initial = self._load()

    def _load(self) -> Any:
        pair = (Path(self._key).read_bytes(), Path(self._cert).read_bytes())
        roots = Path(self._client_ca).read_bytes() if self._client_ca else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)

    def _fetch(self) -> Any:
        """Called by gRPC before each handshake: a new configuration when files changed."""
        with self._lock:
            try:
                if not self._watch.changed():
                    return None
                config = self._load()
            except (OSError, ValueError) as exc:  # mid-rotation: keep serving the old pair
                log.warning("cannot reload TLS certificates (%s); keeping the current ones", exc)
                return None
        log.info("reloaded TLS certificates from %s", self._cert)
        return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch, require_client_authentication=bool(self._client_ca)
        )


class TokenFile:
    """Bearer tokens, one per line (blank lines and ``#`` comments ignored), re-read on change.

    A file that cannot be used (unreadable, not UTF-8, no token) refuses the start; once serving,
    such a version of the file keeps the tokens in force and is logged once, not on every call.
    """

    def __init__(self, path: str) -> None:
        self._watch = _FileWatch(path)
        self._path = path
        self._tokens: tuple[bytes, ...] = ()
        self._problem = ""
        self._lock = threading.Lock()
        self.refresh()
        if not self._tokens:
            raise StartupError(f"--auth-token-file {path}: {self._problem or 'no token in it'}")

    def refresh(self) -> None:
        with self._lock:
            try:
                if not self._watch.changed():
                    return
                lines = Path(self._path).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                self._report(str(exc))
                return
            tokens = tuple(t.encode() for t in map(str.strip, lines) if t and not t.startswith("#"))
            if not tokens:
                self._report("no token in it")
                return
            self._tokens, self._problem = tokens, ""

    def _report(self, problem: str) -> None:
        """Log a new problem once (a missing file fails every call's check, the same way)."""
        if problem != self._problem and self._tokens:
            log.warning(
                "cannot use the token file %s (%s); keeping the current tokens", self._path, problem
            )
        self._problem = problem

    def accepts(self, presented: str) -> bool:
        """Constant-time check of a presented token against every configured one."""
        self.refresh()
        candidate = presented.encode()
        return any([hmac.compare_digest(candidate, token) for token in self._tokens])


def _deny(full_method: str, message: str, observe: Observer | None) -> grpc.RpcMethodHandler:
    """A handler that refuses the call, logged, counted and tagged like any other call.

    The caller chose the method path: it is counted and logged as one of the served methods or
    ``unknown``, so strangers cannot add metric series or long log lines.
    """
    method = method_label(full_method)

    async def abort(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        request_id = logs.request_id(context)
        context.set_trailing_metadata((("x-request-id", request_id),))
        if observe is not None:
            observe(method, "UNAUTHENTICATED", 0.0)
        log.info(
            "%s UNAUTHENTICATED id=%s %s",
            method,
            request_id,
            message,
            extra={"request_id": request_id, "method": method, "code": "UNAUTHENTICATED"},
        )
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if method.endswith("Stream"):
        return grpc.stream_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Requires ``authorization: Bearer <token>`` on every RPC except health and reflection."""

    def __init__(self, tokens: TokenFile, observe: Observer | None = None) -> None:
        self._tokens = tokens
        self._observe = observe

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(OPEN_SERVICES):
            return await continuation(details)
        header = dict(details.invocation_metadata or ()).get("authorization", "")
        scheme, _, token = str(header).partition(" ")
        if scheme.lower() != "bearer" or not token:
            message = "missing bearer token (metadata authorization: Bearer <token>)"
            return _deny(details.method, message, self._observe)
        if not self._tokens.accepts(token.strip()):
            return _deny(details.method, "invalid bearer token", self._observe)
        return await continuation(details)


#: Calls of the open services (health, reflection) at once, all callers together; past it they
#: get RESOURCE_EXHAUSTED. A probe's call lasts milliseconds: a thousand open ones are held.
MAX_OPEN_CALLS = 1000
#: Largest request of an open service: a service, symbol or file name is far shorter, and a
#: reflection answer echoes its request whole, for as long as its client leaves it unread.
MAX_OPEN_REQUEST_BYTES = 4096
_TOO_LARGE = object()  # what the deserializer gives for a request past that


class OpenServices:
    """Registers the services open to every caller, token or not, bounded: at most
    ``MAX_OPEN_CALLS`` calls at once, each counted until gRPC has ended it (an answer its
    client never reads keeps it open), and requests of at most ``MAX_OPEN_REQUEST_BYTES``.
    Unbounded, 10,000 health checks whose client never read held 233 MiB, and 40 reflection
    streams asking for a 4 MB symbol 698 MiB.

    Stands in for the server where generated code registers a servicer
    (``add_HealthServicer_to_server(servicer, OpenServices(server))``) and hands the server
    each method handler wrapped."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self.open = 0  # calls not yet ended

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Generated code registers its handlers twice; the bounded ones are added by
        ``add_registered_method_handlers``, which is given them by name."""

    def add_registered_method_handlers(
        self, service: str, methods: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        bounded = {name: self._bounded(handler) for name, handler in methods.items()}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, bounded),)
        )
        self._server.add_registered_method_handlers(service, bounded)

    def _bounded(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        parse = handler.request_deserializer
        serialize = handler.response_serializer

        def deserialize(data: bytes) -> Any:
            return _TOO_LARGE if len(data) > MAX_OPEN_REQUEST_BYTES else parse(data)

        if handler.request_streaming and handler.response_streaming:
            stream = handler.stream_stream

            async def stream_stream(requests: Any, context: Any) -> None:
                await self._enter(context)
                await _respond(stream(_checked(requests, context), context), context)

            return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)
        if handler.response_streaming:
            unary_stream = handler.unary_stream

            async def one_to_stream(request: Any, context: Any) -> None:
                await self._enter(context)
                await _respond(unary_stream(await _check(request, context), context), context)

            return grpc.unary_stream_rpc_method_handler(one_to_stream, deserialize, serialize)
        if handler.request_streaming:
            raise TypeError("no open service has a client-streaming method")
        unary = handler.unary_unary

        async def one_to_one(request: Any, context: Any) -> Any:
            await self._enter(context)
            return await unary(await _check(request, context), context)

        return grpc.unary_unary_rpc_method_handler(one_to_one, deserialize, serialize)

    async def _enter(self, context: Any) -> None:
        if self.open >= MAX_OPEN_CALLS:
            message = f"{MAX_OPEN_CALLS} health and reflection calls are open; retry later"
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        self.open += 1
        context.add_done_callback(self._ended)

    def _ended(self, _: Any) -> None:
        self.open -= 1


async def _check(request: Any, context: Any) -> Any:
    if request is _TOO_LARGE:
        message = f"request over {MAX_OPEN_REQUEST_BYTES} bytes, more than any name here takes"
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
    return request


async def _checked(requests: Any, context: Any) -> Any:
    async for request in requests:
        yield await _check(request, context)


async def _respond(result: Any, context: Any) -> None:
    """Send a streaming handler's answers, whether it yields them or writes them itself."""
    if inspect.isasyncgen(result):
        async for response in result:
            await context.write(response)
    else:
        await result
