"""Sync and async clients for a rerankd server.

Both clients share one set of module-level functions that build request messages and convert
responses, so protobuf types never leave this module and the two clients cannot drift apart.
The channel carries a service config that retries UNAVAILABLE (a server starting or draining)
with exponential backoff: every RerankService method is idempotent, so a retry is always safe.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import grpc
import grpc.aio

from rerankd._types import (
    BatchingLimits,
    Document,
    DocumentLike,
    ModelInfo,
    RequestLimits,
    Reranked,
    RerankResult,
    Scored,
    Truncation,
    Usage,
)
from rerankd.errors import from_rpc_error
from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["DEFAULT_TARGET", "AsyncClient", "Client"]

_D = TypeVar("_D", bound="DataclassInstance")

DEFAULT_TARGET = "localhost:50051"
"""Where a client connects when no target is given (the sidecar's default port)."""

_MESSAGE_LIMIT = 64 * 1024 * 1024

_SERVICE_CONFIG = {
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
    ]
}

_DEFAULT_OPTIONS: dict[str, Any] = {
    "grpc.service_config": json.dumps(_SERVICE_CONFIG),
    "grpc.enable_retries": 1,
    "grpc.max_receive_message_length": _MESSAGE_LIMIT,
    "grpc.max_send_message_length": _MESSAGE_LIMIT,
}

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


def _rerank_request(
    query: str,
    documents: Sequence[DocumentLike],
    *,
    top_n: int,
    return_documents: bool,
    raw_scores: bool,
    truncation: Truncation,
    model: str,
) -> pb.RerankRequest:
    if top_n < 0:
        raise ValueError(f"top_n must be >= 0 (0 returns all), not {top_n}")
    return pb.RerankRequest(
        query=query,
        documents=[_document(doc) for doc in _not_a_str(documents, "documents")],
        top_n=top_n,
        return_documents=return_documents,
        raw_scores=raw_scores,
        truncation=_truncation(truncation),
        model=model,
    )


def _score_request(
    pairs: Sequence[tuple[str, str]], *, raw_scores: bool, truncation: Truncation, model: str
) -> pb.ScoreRequest:
    return pb.ScoreRequest(
        pairs=[pb.Pair(query=query, text=text) for query, text in _not_a_str(pairs, "pairs")],
        raw_scores=raw_scores,
        truncation=_truncation(truncation),
        model=model,
    )


def _from_pb(cls: type[_D], msg: Any, **given: Any) -> _D:
    """Build dataclass ``cls`` from the same-named fields of ``msg``, except those ``given``.

    The result types mirror the wire messages field for field, so copying by name keeps the
    two in step; a field missing from the message fails here, in every test that converts.
    """
    copied = {f.name: getattr(msg, f.name) for f in dataclasses.fields(cls) if f.name not in given}
    return cls(**copied, **given)


def _reranked(msg: pb.RerankResponse) -> Reranked:
    results = [_from_pb(RerankResult, result) for result in msg.results]
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
    )


# --- the clients -------------------------------------------------------------------------------


class _Base:
    """What both clients share: the channel, the stub, the default deadline and metadata."""

    _grpc: ClassVar[types.ModuleType]  # grpc or grpc.aio: the only difference at construction

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        metadata: Sequence[tuple[str, str]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        merged = list({**_DEFAULT_OPTIONS, **dict(options)}.items())
        if credentials is None:
            self._channel = self._grpc.insecure_channel(target, options=merged)
        else:
            self._channel = self._grpc.secure_channel(target, credentials, options=merged)
        self._stub = pb_grpc.RerankServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._metadata = tuple(metadata)

    def _call_args(self, timeout: float | None) -> dict[str, Any]:
        return {
            "timeout": self._timeout if timeout is None else timeout,
            "metadata": self._metadata or None,
        }


class Client(_Base):
    """Blocking client for one rerankd server (or a load-balanced set behind one target).

    Args:
        target: gRPC target, e.g. ``"localhost:50051"`` or ``"dns:///rerankd:50051"``.
        timeout: default deadline of each call in seconds; None means no deadline.
        metadata: sent with every call, e.g. ``[("authorization", "Bearer TOKEN")]``.
        credentials: TLS credentials (``grpc.ssl_channel_credentials()``); None for plaintext.
        options: extra channel options; they override the defaults (retry service config,
            64 MiB message limits) key by key.

    Every method raises a :class:`~rerankd.errors.RerankdError` subclass when the call fails,
    after gRPC has retried UNAVAILABLE up to 3 times. Thread-safe; close it (or use ``with``)
    to release the channel.
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
        )
        return _reranked(self._invoke(self._stub.Rerank, request, timeout))

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        raw_scores: bool = False,
        truncation: Truncation = "default",
        model: str = "",
        timeout: float | None = None,
    ) -> Scored:
        """Score independent ``(query, text)`` pairs; ``scores[i]`` belongs to ``pairs[i]``.

        Arguments and errors as for :meth:`rerank`.
        """
        request = _score_request(pairs, raw_scores=raw_scores, truncation=truncation, model=model)
        return _scored(self._invoke(self._stub.Score, request, timeout))

    def model_info(self, model: str = "", *, timeout: float | None = None) -> ModelInfo:
        """Describe ``model`` (empty: the default one) and the limits the server enforces.

        Raises NotFound for a model the server does not serve, and the other errors of
        :meth:`rerank`.
        """
        request = pb.GetModelInfoRequest(model=model)
        return _model_info(self._invoke(self._stub.GetModelInfo, request, timeout))


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
        )
        return _reranked(await self._invoke(self._stub.Rerank, request, timeout))

    async def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        raw_scores: bool = False,
        truncation: Truncation = "default",
        model: str = "",
        timeout: float | None = None,
    ) -> Scored:
        """As :meth:`Client.score`."""
        request = _score_request(pairs, raw_scores=raw_scores, truncation=truncation, model=model)
        return _scored(await self._invoke(self._stub.Score, request, timeout))

    async def model_info(self, model: str = "", *, timeout: float | None = None) -> ModelInfo:
        """As :meth:`Client.model_info`."""
        request = pb.GetModelInfoRequest(model=model)
        return _model_info(await self._invoke(self._stub.GetModelInfo, request, timeout))
