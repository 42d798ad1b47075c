"""Sync and async clients for a rerankd server.

Both clients share one set of module-level functions that build request messages and convert
responses, so protobuf types never leave this module and the two clients cannot drift apart.
The channel carries a service config that balances calls round-robin over every address the
target resolves to and retries UNAVAILABLE (a server starting, draining or gone) with exponential
backoff: every RerankService method is idempotent, so a retry is always safe, and a retry is
picked onto another replica. Scale-out is gRPC's own load balancing, nothing home-made: give a
``dns:///name:port`` target (e.g. a Kubernetes headless Service, re-resolved as pods come and go)
or a list of ``host:port`` targets (a static set, see :func:`channel_target`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import socket
import time
import types
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, TypeVar

import grpc
import grpc.aio

from rerankd._types import (
    BatchingLimits,
    ChunkInfo,
    Chunking,
    Document,
    DocumentLike,
    ModelInfo,
    Normalization,
    RequestLimits,
    Reranked,
    RerankResult,
    Scored,
    StreamResult,
    Truncation,
    Usage,
)
from rerankd.errors import DeadlineExceeded, Internal, from_rpc_error, from_status
from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["DEFAULT_TARGET", "AsyncClient", "Client", "Pem", "Targets", "channel_target"]

_D = TypeVar("_D", bound="DataclassInstance")

DEFAULT_TARGET = "localhost:50051"
"""Where a client connects when no target is given (the sidecar's default port)."""

_MESSAGE_LIMIT = 64 * 1024 * 1024

_SERVICE_CONFIG = {
    # Spread calls over every resolved address; the default (pick_first) would send them all to
    # one replica, and a retry after a replica died would go nowhere else.
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": pb.DESCRIPTOR.services_by_name["RerankService"].full_name}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}

_DEFAULT_OPTIONS: dict[str, Any] = {
    "grpc.service_config": json.dumps(_SERVICE_CONFIG),
    "grpc.enable_retries": 1,
    "grpc.max_receive_message_length": _MESSAGE_LIMIT,
    "grpc.max_send_message_length": _MESSAGE_LIMIT,
    # Keep idle channels alive through load balancers and NAT (the server allows a ping
    # every 10 s without calls) and notice a dead peer within about 80 s.
    "grpc.keepalive_time_ms": 60_000,
    "grpc.keepalive_timeout_ms": 20_000,
    "grpc.keepalive_permit_without_calls": 1,
    # A restarted sidecar is back within seconds: do not back off for minutes meanwhile.
    "grpc.max_reconnect_backoff_ms": 5_000,
}

Targets: TypeAlias = str | Sequence[str]
"""One gRPC target string, or several ``host:port`` targets to balance over."""

Pem: TypeAlias = bytes | os.PathLike[str]
"""PEM data, or the path of a file holding it (read once, when the client is built)."""

# Target schemes gRPC resolves itself; anything else is taken as host:port.
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:", "google-c2p:")

_TRUNCATION: dict[str, pb.Truncation] = {
    "default": pb.TRUNCATION_UNSPECIFIED,
    "end": pb.TRUNCATION_END,
    "start": pb.TRUNCATION_START,
    "none": pb.TRUNCATION_NONE,
}


# --- conversions: the only place that knows the generated types ------------------------------


def _truncation(value: Truncation) -> pb.Truncation:
    try:
        return _TRUNCATION[value]
    except KeyError:
        raise ValueError(
            f"truncation must be one of {sorted(_TRUNCATION)}, not {value!r}"
        ) from None


def _document(doc: DocumentLike) -> pb.Document:
    if isinstance(doc, str):
        return pb.Document(text=doc)
    if isinstance(doc, Document):
        return pb.Document(id=doc.id, text=doc.text)
    if isinstance(doc, tuple) and len(doc) == 2:
        return pb.Document(id=doc[0], text=doc[1])
    raise TypeError(f"a document is a str, a Document or an (id, text) tuple, not {doc!r}")


def _not_a_str(items: Sequence[Any], name: str) -> Sequence[Any]:
    # A str is a Sequence of str: taking one for a list of documents would score each character.
    if isinstance(items, str):
        raise TypeError(f"{name} must be a sequence, not a single str")
    return items


_NORMALIZATION: dict[str, pb.Normalization] = {
    "default": pb.NORMALIZATION_UNSPECIFIED,
    "model": pb.NORMALIZATION_MODEL,
    "raw": pb.NORMALIZATION_RAW,
    "sigmoid": pb.NORMALIZATION_SIGMOID,
}
_REDUCE = {"max": pb.CHUNK_REDUCE_MAX, "mean": pb.CHUNK_REDUCE_MEAN, "first": pb.CHUNK_REDUCE_FIRST}


def _normalization(value: Normalization) -> pb.Normalization:
    if value not in _NORMALIZATION:
        raise ValueError(f"normalization must be one of {sorted(_NORMALIZATION)}, not {value!r}")
    return _NORMALIZATION[value]


def _rerank_request(
    query: str,
    documents: Sequence[DocumentLike],
    *,
    top_n: int = 0,
    return_documents: bool = False,
    raw_scores: bool = False,
    truncation: Truncation = "default",
    model: str = "",
    normalization: Normalization = "default",
    chunking: Chunking | None = None,
    min_score: float | None = None,
) -> pb.RerankRequest:
    if top_n < 0:
        raise ValueError(f"top_n must be >= 0 (0 returns all), not {top_n}")
    request = pb.RerankRequest(
        query=query,
        documents=[_document(doc) for doc in _not_a_str(documents, "documents")],
        top_n=top_n,
        return_documents=return_documents,
        raw_scores=raw_scores,
        truncation=_truncation(truncation),
        model=model,
        normalization=_normalization(normalization),
    )
    if chunking is not None:
        if chunking.reduce not in _REDUCE:
            raise ValueError(f"chunking.reduce must be one of {sorted(_REDUCE)}")
        request.chunking.CopyFrom(
            pb.Chunking(
                max_chunks=chunking.max_chunks,
                overlap_tokens=chunking.overlap_tokens,
                reduce=_REDUCE[chunking.reduce],
            )
        )
    if min_score is not None:
        request.min_score = min_score
    return request


def _score_request(
    pairs: Sequence[tuple[str, str]],
    *,
    raw_scores: bool,
    truncation: Truncation,
    model: str,
    normalization: Normalization = "default",
) -> pb.ScoreRequest:
    return pb.ScoreRequest(
        pairs=[pb.Pair(query=query, text=text) for query, text in _not_a_str(pairs, "pairs")],
        raw_scores=raw_scores,
        truncation=_truncation(truncation),
        model=model,
        normalization=_normalization(normalization),
    )


def _stream_requests(
    items: Iterable[tuple[str, str, Sequence[DocumentLike]]], options: dict[str, Any]
) -> Iterator[pb.RerankStreamRequest]:
    for request_id, query, documents in items:
        request = _rerank_request(query, documents, **options)
        yield pb.RerankStreamRequest(request_id=request_id, request=request)


def _stream_result(msg: pb.RerankStreamResponse) -> StreamResult:
    if msg.code:
        return StreamResult(msg.request_id, None, from_status(msg.code, msg.message))
    return StreamResult(msg.request_id, _reranked(msg.response), None)


def _from_pb(cls: type[_D], msg: Any, **given: Any) -> _D:
    """Build dataclass ``cls`` from the same-named fields of ``msg``, except those ``given``.

    The result types mirror the wire messages field for field, so copying by name keeps the
    two in step; a field missing from the message fails here, in every test that converts.
    """
    copied = {f.name: getattr(msg, f.name) for f in dataclasses.fields(cls) if f.name not in given}
    return cls(**copied, **given)


def _result(msg: pb.RerankResult) -> RerankResult:
    """Field by field, not through ``_from_pb``: results are the one conversion made per
    document, and naming the fields halves its cost (the unit tests hold both field lists
    equal)."""
    chunk = _from_pb(ChunkInfo, msg.chunk) if msg.HasField("chunk") else None
    return RerankResult(index=msg.index, id=msg.id, score=msg.score, text=msg.text, chunk=chunk)


def _reranked(msg: pb.RerankResponse) -> Reranked:
    results = [_result(result) for result in msg.results]
    return Reranked(results=results, model=msg.model, usage=_from_pb(Usage, msg.usage))


def _scored(msg: pb.ScoreResponse) -> Scored:
    return Scored(scores=list(msg.scores), model=msg.model, usage=_from_pb(Usage, msg.usage))


def _model_info(msg: pb.GetModelInfoResponse) -> ModelInfo:
    return _from_pb(
        ModelInfo,
        msg.model,
        batching=_from_pb(BatchingLimits, msg.model.batching),
        limits=_from_pb(RequestLimits, msg.limits),
        server_version=msg.server_version,
        served_models=tuple(m.name for m in msg.models),
    )


# --- targets and credentials -------------------------------------------------------------------


def channel_target(targets: Targets) -> str:
    """Turn what a client was given into one gRPC target string.

    A str is used as is: ``"host:port"`` (resolved by DNS, balanced over its addresses),
    ``"dns:///name:port"`` (the same, spelled out; re-resolved when connections fail, which is
    what a Kubernetes headless Service needs), or any other gRPC target (``ipv4:``, ``unix:``).
    A sequence of ``host:port`` strings becomes one static ``ipv4:``/``ipv6:`` target, the form
    gRPC balances over without a resolver: hosts must be IP literals (IPv6 in brackets,
    ``[::1]:50051``) or names, which are resolved once, here (``localhost`` becomes
    ``127.0.0.1``); a name whose addresses change belongs in a ``dns:///`` target instead.

    Raises:
        ValueError: no target, a comma-separated str (give a list), an entry that is not
            ``host:port``, a scheme inside a list, a name that does not resolve, or a list
            that mixes IPv4 and IPv6 (gRPC cannot balance one static target across both).
    """
    if isinstance(targets, str):
        if not targets.strip():
            raise ValueError("the target is empty")
        if "," in targets and not targets.startswith(_SCHEMES):
            raise ValueError(f"{targets!r}: give several targets as a list, not one str")
        return targets
    entries = [entry.strip() for entry in targets]
    if not entries or not all(entries):
        raise ValueError(f"need at least one non-empty target, not {list(targets)!r}")
    if len(entries) == 1:
        return entries[0]
    v4: list[str] = []
    v6: list[str] = []
    for entry in entries:
        for family, address in _resolve(entry):
            (v4 if family == 4 else v6).append(address)
    if v4 and v6:
        raise ValueError(
            f"targets {entries} mix IPv4 and IPv6 addresses ({v4[0]}, {v6[0]}); gRPC balances a "
            "static list within one family: give one family, or one dns:/// target"
        )
    return f"ipv4:{','.join(v4)}" if v4 else f"ipv6:{','.join(v6)}"


def _resolve(entry: str) -> list[tuple[int, str]]:
    """``host:port`` -> [(IP version, address as the ipv4:/ipv6: schemes spell it)]."""
    if entry.startswith(_SCHEMES):
        raise ValueError(
            f"{entry!r}: a list takes host:port entries; a scheme target must be the only target"
        )
    host, sep, port = entry.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r} is not host:port (IPv6 as [addr]:port)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return [(4, f"{ip}:{port}")] if ip.version == 4 else [(6, f"[{ip}]:{port}")]
    if host == "localhost":  # servers listen on 127.0.0.1 far more often than on ::1
        return [(4, f"127.0.0.1:{port}")]
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ValueError(f"{entry!r}: cannot resolve {host!r} ({err})") from None
    found: dict[str, int] = {}
    for family, _, _, _, sockaddr in infos:
        address = str(sockaddr[0])
        found.setdefault(address, 4 if family == socket.AF_INET else 6)
    if any(version == 4 for version in found.values()):  # prefer one family: IPv4 when there
        return [(4, f"{a}:{port}") for a, v in found.items() if v == 4]
    return [(6, f"[{a}]:{port}") for a in found]


def _pem(value: Pem | None, name: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # A str could be PEM text or a path; refusing it beats guessing wrong.
        raise TypeError(f"{name} must be bytes (PEM) or a pathlib.Path, not str")
    return Path(value).read_bytes()


def _channel_credentials(
    *,
    tls: bool,
    root_certificates: Pem | None,
    certificate_chain: Pem | None,
    private_key: Pem | None,
    credentials: grpc.ChannelCredentials | None,
    token: str | None,
) -> grpc.ChannelCredentials | None:
    """The channel's credentials, or None for a plaintext channel.

    A token rides on TLS as call credentials (gRPC sends those only over a secure channel);
    on plaintext the caller adds it as metadata instead.
    """
    pems = {
        "root_certificates": _pem(root_certificates, "root_certificates"),
        "certificate_chain": _pem(certificate_chain, "certificate_chain"),
        "private_key": _pem(private_key, "private_key"),
    }
    if credentials is not None and (tls or any(v is not None for v in pems.values())):
        raise ValueError("give either credentials= or the TLS options, not both")
    if (pems["certificate_chain"] is None) != (pems["private_key"] is None):
        raise ValueError("a client certificate (mTLS) needs both certificate_chain and private_key")
    if credentials is None and (tls or any(v is not None for v in pems.values())):
        credentials = grpc.ssl_channel_credentials(**pems)
    if credentials is not None and token:
        return grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return credentials


# --- the clients -------------------------------------------------------------------------------


class _Base:
    """What both clients share: the channel, the stub, the default deadline and metadata."""

    _grpc: ClassVar[types.ModuleType]  # grpc or grpc.aio: the only difference at construction

    def __init__(
        self,
        target: Targets = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        tls: bool = False,
        root_certificates: Pem | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
        tls_server_name: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if token is not None and not token.strip():
            raise ValueError("token is empty")
        if token and any(key.lower() == "authorization" for key, _ in metadata):
            raise ValueError("give either token= or an authorization metadata entry, not both")
        self.target = channel_target(target)
        secure = _channel_credentials(
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            credentials=credentials,
            token=token,
        )
        extra = dict(options)
        if tls_server_name:
            if secure is None:
                raise ValueError("tls_server_name needs TLS (tls=True or credentials=)")
            extra.setdefault("grpc.ssl_target_name_override", tls_server_name)
        merged = list({**_DEFAULT_OPTIONS, **extra}.items())
        if secure is None:
            self._channel = self._grpc.insecure_channel(self.target, options=merged)
        else:
            self._channel = self._grpc.secure_channel(self.target, secure, options=merged)
        self._stub = pb_grpc.RerankServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        if token and secure is None:  # plaintext: no call credentials, so plain metadata
            metadata = [*metadata, ("authorization", f"Bearer {token}")]
        self._metadata = tuple(metadata)

    def _call_args(self, timeout: float | None) -> dict[str, Any]:
        return {
            "timeout": self._timeout if timeout is None else timeout,
            "metadata": self._metadata or None,
        }


class Client(_Base):
    """Blocking client for one rerankd server or a pool of replicas, balanced round-robin.

    Args:
        target: a gRPC target (``"localhost:50051"``, ``"dns:///rerankd-pool:50051"``) or a
            list of ``host:port`` replicas; see :func:`channel_target` for what is accepted.
            The resolved target string is kept in ``self.target``.
        timeout: default deadline of each call in seconds; None means no deadline.
        metadata: sent with every call, e.g. ``[("x-request-id", "...")]``.
        token: bearer token, sent as ``authorization: Bearer TOKEN`` (as TLS call credentials
            when TLS is on, as plain metadata otherwise).
        tls: use TLS with the system's root certificates (or ``root_certificates``).
        root_certificates: CA bundle (PEM bytes or a Path) that signed the server's
            certificate; implies TLS.
        certificate_chain, private_key: the client's certificate and key for mutual TLS
            (PEM bytes or Paths); both or neither; imply TLS.
        tls_server_name: the name to check the server's certificate against, when it differs
            from the target's host (e.g. replicas dialled by IP).
        credentials: ready-made ``grpc.ChannelCredentials`` instead of the TLS options above.
        options: extra channel options; they override the defaults (round-robin and retry
            service config, 64 MiB message limits) key by key.

    Every method raises a :class:`~rerankd.errors.RerankdError` subclass when the call fails,
    after gRPC has retried UNAVAILABLE up to 3 times (each retry may go to another replica).
    Thread-safe; close it (or use ``with``) to release the channel.

    Raises:
        ValueError: a target or an option combination that cannot work (see the arguments).
        TypeError: a PEM given as str (ambiguous between text and path).
        OSError: a PEM path that cannot be read.
    """

    _grpc = grpc

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled. Safe to call twice."""
        self._channel.close()

    def _invoke(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, **self._call_args(timeout))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def rerank(
        self,
        query: str,
        documents: Sequence[DocumentLike],
        *,
        top_n: int = 0,
        return_documents: bool = False,
        raw_scores: bool = False,
        truncation: Truncation = "default",
        model: str = "",
        normalization: Normalization = "default",
        chunking: Chunking | None = None,
        min_score: float | None = None,
        timeout: float | None = None,
    ) -> Reranked:
        """Score ``documents`` against ``query`` and return them best first.

        Args:
            query: the search query; must not be blank.
            documents: texts, :class:`Document` objects or ``(id, text)`` tuples, in
                first-stage order; result indexes refer to this order.
            top_n: return only the best ``top_n``; 0 returns all.
            return_documents: echo each document's text in its result.
            raw_scores: return the model's logits instead of activated scores.
            truncation: what to do with over-long pairs (see :data:`~rerankd.Truncation`).
            model: the served model to use; empty means the server's default.
            normalization: how logits become scores (see :data:`~rerankd.Normalization`).
            chunking: score over-long documents in chunks (see :class:`~rerankd.Chunking`);
                each result then says which chunk won.
            min_score: leave out results scoring below this (after ``top_n``).
            timeout: deadline in seconds for this call; None uses the client's default.

        Raises:
            InvalidArgument, NotFound, ResourceExhausted, Unavailable, DeadlineExceeded, ...:
                the call failed (see :mod:`rerankd.errors`).
            ValueError, TypeError: the arguments cannot be put on the wire.
        """
        request = _rerank_request(
            query,
            documents,
            top_n=top_n,
            return_documents=return_documents,
            raw_scores=raw_scores,
            truncation=truncation,
            model=model,
            normalization=normalization,
            chunking=chunking,
            min_score=min_score,
        )
        return _reranked(self._invoke(self._stub.Rerank, request, timeout))

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        raw_scores: bool = False,
        truncation: Truncation = "default",
        model: str = "",
        normalization: Normalization = "default",
        timeout: float | None = None,
    ) -> Scored:
        """Score independent ``(query, text)`` pairs; ``scores[i]`` belongs to ``pairs[i]``.

        Arguments and errors as for :meth:`rerank`.
        """
        request = _score_request(
            pairs,
            raw_scores=raw_scores,
            truncation=truncation,
            model=model,
            normalization=normalization,
        )
        return _scored(self._invoke(self._stub.Score, request, timeout))

    def model_info(self, model: str = "", *, timeout: float | None = None) -> ModelInfo:
        """Describe ``model`` (empty: the default one) and the limits the server enforces.

        Raises NotFound for a model the server does not serve, and the other errors of
        :meth:`rerank`.
        """
        request = pb.GetModelInfoRequest(model=model)
        return _model_info(self._invoke(self._stub.GetModelInfo, request, timeout))

    def rerank_stream(
        self,
        items: Iterable[tuple[str, str, Sequence[DocumentLike]]],
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> Iterator[StreamResult]:
        """Rerank many ``(request_id, query, documents)`` items over one stream (bulk work).

        ``options`` are :meth:`rerank`'s keyword arguments, applied to every item. Results
        come as the server finishes them, tagged with their ``request_id``; an item that fails
        carries its error instead, and the stream goes on. Items are read lazily, and the
        server takes new ones only as results are consumed.

        Raises:
            RerankdError: the stream itself failed (e.g. a deadline for the whole stream).
        """
        replies = self._stub.RerankStream(
            _stream_requests(items, options), **self._call_args(timeout)
        )
        try:
            for reply in replies:
                yield _stream_result(reply)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client` (grpc.aio): same arguments, results and errors.

    Create it inside the event loop that will use it; close it with ``await aclose()`` or
    ``async with``.
    """

    _grpc = grpc.aio

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel; calls in flight are cancelled. Safe to call twice."""
        await self._channel.close()

    async def _invoke(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, **self._call_args(timeout))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def rerank(
        self,
        query: str,
        documents: Sequence[DocumentLike],
        *,
        top_n: int = 0,
        return_documents: bool = False,
        raw_scores: bool = False,
        truncation: Truncation = "default",
        model: str = "",
        normalization: Normalization = "default",
        chunking: Chunking | None = None,
        min_score: float | None = None,
        timeout: float | None = None,
    ) -> Reranked:
        """As :meth:`Client.rerank`."""
        request = _rerank_request(
            query,
            documents,
            top_n=top_n,
            return_documents=return_documents,
            raw_scores=raw_scores,
            truncation=truncation,
            model=model,
            normalization=normalization,
            chunking=chunking,
            min_score=min_score,
        )
        return _reranked(await self._invoke(self._stub.Rerank, request, timeout))

    async def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        raw_scores: bool = False,
        truncation: Truncation = "default",
        model: str = "",
        normalization: Normalization = "default",
        timeout: float | None = None,
    ) -> Scored:
        """As :meth:`Client.score`."""
        request = _score_request(
            pairs,
            raw_scores=raw_scores,
            truncation=truncation,
            model=model,
            normalization=normalization,
        )
        return _scored(await self._invoke(self._stub.Score, request, timeout))

    async def model_info(self, model: str = "", *, timeout: float | None = None) -> ModelInfo:
        """As :meth:`Client.model_info`."""
        request = pb.GetModelInfoRequest(model=model)
        return _model_info(await self._invoke(self._stub.GetModelInfo, request, timeout))

    async def rerank_stream(
        self,
        items: Iterable[tuple[str, str, Sequence[DocumentLike]]],
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> AsyncIterator[StreamResult]:
        """As :meth:`Client.rerank_stream`."""
        args = self._call_args(timeout)
        ends = None if args["timeout"] is None else time.monotonic() + args["timeout"]
        call = self._stub.RerankStream(_stream_requests(items, options), **args)
        try:
            async for reply in call:
                yield _stream_result(reply)
        except grpc.RpcError as err:
            error = from_rpc_error(err)
            if isinstance(error, Internal) and ends is not None and time.monotonic() >= ends:
                # grpc.aio ends a stream whose deadline falls while a request is being written
                # with that write's failure, INTERNAL "Internal error from Core", not the
                # deadline: report the deadline, as the blocking client does.
                error = DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            raise error from err
