"""RerankService: protobuf in, domain calls to the scheduler, protobuf out.

This is the one place where generated types meet the domain and where domain errors become
gRPC status codes (``_STATUS``). It validates every request against the limits in
``RequestLimits`` before any work is queued, and never touches torch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from rerankd.v1 import rerank_pb2 as pb
from rerankd_server import __version__
from rerankd_server.errors import (
    DeadlineExpired,
    InvalidRequest,
    ModelFailure,
    ModelNotFound,
    NotReady,
    Overloaded,
    RerankdServerError,
)
from rerankd_server.scheduler import BatchScheduler, Outcome, SchedulerConfig, Usage
from rerankd_server.scoring.base import Scorer, Truncation
from rerankd_server.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = "rerankd.v1.RerankService"

_STATUS: dict[type[RerankdServerError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    ModelFailure: grpc.StatusCode.INTERNAL,
}

_TRUNCATION: dict[int, Truncation] = {
    pb.TRUNCATION_UNSPECIFIED: Truncation.DEFAULT,
    pb.TRUNCATION_END: Truncation.END,
    pb.TRUNCATION_START: Truncation.START,
    pb.TRUNCATION_NONE: Truncation.NONE,
}


@dataclass(frozen=True)
class ServedModel:
    """A model ready to serve: its scorer, its scheduler and the scheduler's config."""

    scorer: Scorer
    scheduler: BatchScheduler
    config: SchedulerConfig


@dataclass(frozen=True)
class _Malformed:
    """Stands in for a request whose bytes did not parse, so it gets INVALID_ARGUMENT."""

    error: str


class RerankServicer:
    """Implements rerankd.v1.RerankService over the served model(s)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: dict[str, ServedModel] = {}
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def call_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def call_ended(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Refuse new calls (UNAVAILABLE) and wait up to ``grace`` seconds for accepted ones.

        Returns whether every accepted call finished. Refusing in the servicer while the port
        stays open gives new calls a clean UNAVAILABLE, which clients retry elsewhere, rather
        than a reset stream from a server that is closing.
        """
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True

    def add_model(self, name: str, model: ServedModel) -> None:
        """Start routing requests for ``name`` (the first model added is the default)."""
        self._models[name] = model

    async def Rerank(self, request: pb.RerankRequest, context: Any) -> pb.RerankResponse:
        name, model = self._model(request.model)
        self._check_query(request.query, "query")
        self._check_count(len(request.documents), "documents")
        for i, doc in enumerate(request.documents):
            self._check_text(doc.text, f"documents[{i}].text")
        pairs = [(request.query, doc.text) for doc in request.documents]
        outcome = await self._submit(model, pairs, request.truncation, context)
        scores = self._scores(model, outcome, request.raw_scores)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        if request.top_n:
            order = order[: request.top_n]
        results = [
            pb.RerankResult(
                index=i,
                id=request.documents[i].id,
                score=scores[i],
                text=request.documents[i].text if request.return_documents else "",
            )
            for i in order
        ]
        return pb.RerankResponse(results=results, model=name, usage=_usage_pb(outcome.usage))

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:
        name, model = self._model(request.model)
        self._check_count(len(request.pairs), "pairs")
        for i, pair in enumerate(request.pairs):
            self._check_query(pair.query, f"pairs[{i}].query")
            self._check_text(pair.text, f"pairs[{i}].text")
        pairs = [(pair.query, pair.text) for pair in request.pairs]
        outcome = await self._submit(model, pairs, request.truncation, context)
        scores = self._scores(model, outcome, request.raw_scores)
        return pb.ScoreResponse(scores=scores, model=name, usage=_usage_pb(outcome.usage))

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: Any
    ) -> pb.GetModelInfoResponse:
        name, model = self._model(request.model)
        info, config, s = model.scorer.info, model.config, self._settings
        return pb.GetModelInfoResponse(
            model=pb.ModelInfo(
                name=name,
                max_input_tokens=info.max_input_tokens,
                activation=info.activation,
                dtype=info.dtype,
                device=info.device,
                attention_implementation=info.attention_implementation,
                batching=pb.BatchingLimits(
                    max_batch_tokens=config.limits.max_batch_tokens,
                    max_batch_size=config.limits.max_batch_size,
                    padded_batches=config.limits.padded,
                    max_queue_pairs=config.max_queue_pairs,
                    max_queue_tokens=config.max_queue_tokens,
                ),
            ),
            limits=pb.RequestLimits(
                max_documents=s.max_documents,
                max_query_bytes=s.max_query_bytes,
                max_document_bytes=s.max_document_bytes,
                max_message_bytes=s.max_message_bytes,
            ),
            server_version=__version__,
        )

    def _model(self, requested: str) -> tuple[str, ServedModel]:
        if self.draining:
            raise NotReady("the server is shutting down; use another replica")
        if not self._models:
            raise NotReady("the model is still loading; retry shortly")
        if not requested:
            return next(iter(self._models.items()))
        model = self._models.get(requested)
        if model is None:
            served = ", ".join(sorted(self._models))
            raise ModelNotFound(f"model {requested!r} is not served here (served: {served})")
        return requested, model

    def _check_query(self, query: str, field: str) -> None:
        if not query.strip():
            raise InvalidRequest(f"{field} is empty")
        size = len(query.encode("utf-8"))
        if size > self._settings.max_query_bytes:
            raise InvalidRequest(
                f"{field} has {size} bytes; the limit is {self._settings.max_query_bytes}"
            )

    def _check_text(self, text: str, field: str) -> None:
        size = len(text.encode("utf-8"))
        if size > self._settings.max_document_bytes:
            raise InvalidRequest(
                f"{field} has {size} bytes; the limit is {self._settings.max_document_bytes}"
            )

    def _check_count(self, count: int, field: str) -> None:
        if count == 0:
            raise InvalidRequest(f"no {field} given")
        if count > self._settings.max_documents:
            raise InvalidRequest(
                f"{count} {field} given; the limit is {self._settings.max_documents}"
            )

    async def _submit(
        self, model: ServedModel, pairs: Sequence[tuple[str, str]], truncation: int, context: Any
    ) -> Outcome:
        mode = _TRUNCATION.get(truncation)
        if mode is None:
            raise InvalidRequest(f"unknown truncation value {truncation}")
        remaining = context.time_remaining()
        deadline = None if remaining is None else asyncio.get_running_loop().time() + remaining
        return await model.scheduler.submit(pairs, mode, deadline)

    @staticmethod
    def _scores(model: ServedModel, outcome: Outcome, raw: bool) -> list[float]:
        values = outcome.logits if raw else model.scorer.activate(outcome.logits)
        return [float(v) for v in values]


def _usage_pb(usage: Usage) -> pb.Usage:
    return pb.Usage(
        input_tokens=usage.input_tokens,
        truncated_pairs=usage.truncated_pairs,
        queue_time_us=usage.queue_time_us,
        inference_time_us=usage.inference_time_us,
        batches=usage.batches,
    )


Request = TypeVar("Request")
Response = TypeVar("Response")
Observer = Callable[[str, str, float], None]  # (method, status code name, seconds)


def _request_id(context: Any) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return str(value)[:128]
    return uuid.uuid4().hex[:16]


def _items(request: Any) -> int:
    return len(getattr(request, "documents", None) or getattr(request, "pairs", None) or ())


def _guarded(
    name: str,
    method: Callable[[Request, Any], Awaitable[Response]],
    observe: Observer | None,
    servicer: RerankServicer,
) -> Callable[[Request, Any], Awaitable[Response]]:
    """Run one RPC: map domain errors to status codes (INTERNAL, logged once, for anything
    unexpected), tag it with a request id, and record its status and latency."""

    async def handler(request: Any, context: Any) -> Response:
        started = time.perf_counter()
        request_id = _request_id(context)
        await context.send_initial_metadata((("x-request-id", request_id),))
        code, message = grpc.StatusCode.OK, ""
        servicer.call_started()
        try:
            if isinstance(request, _Malformed):
                code, message = grpc.StatusCode.INVALID_ARGUMENT, request.error
            else:
                return await method(request, context)
        except RerankdServerError as exc:
            code, message = _STATUS[type(exc)], str(exc)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            log.exception("unexpected error in %s (request %s)", name, request_id)
            code, message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        finally:
            servicer.call_ended()
            seconds = time.perf_counter() - started
            if observe is not None:
                observe(name, code.name, seconds)
            log.log(
                logging.WARNING if code == grpc.StatusCode.INTERNAL else logging.INFO,
                "%s %s %.1fms id=%s %s",
                name,
                code.name,
                seconds * 1000,
                request_id,
                message,
                extra={
                    "request_id": request_id,
                    "method": name,
                    "code": code.name,
                    "duration_ms": round(seconds * 1000, 3),
                    "items": _items(request),
                },
            )
        await context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")

    return handler


def _parser(message: type[Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except (DecodeError, UnicodeDecodeError) as exc:
            return _Malformed(f"request is not a valid {message.DESCRIPTOR.full_name}: {exc}")

    return parse


def handlers(servicer: RerankServicer, observe: Observer | None = None) -> grpc.GenericRpcHandler:
    """The service's method handlers, with parse errors reported as INVALID_ARGUMENT."""
    methods = {
        "Rerank": (servicer.Rerank, pb.RerankRequest),
        "Score": (servicer.Score, pb.ScoreRequest),
        "GetModelInfo": (servicer.GetModelInfo, pb.GetModelInfoRequest),
    }
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            name: grpc.unary_unary_rpc_method_handler(
                _guarded(name, method, observe, servicer),
                request_deserializer=_parser(message),
                response_serializer=lambda response: response.SerializeToString(),
            )
            for name, (method, message) in methods.items()
        },
    )
