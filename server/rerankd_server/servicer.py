"""RerankService: protobuf in, domain calls to the rerankers, protobuf out.

This is the one place where generated types meet the domain and where domain errors become
gRPC status codes (``_STATUS``). It validates every request against the limits in
``RequestLimits`` before any work is queued, and never touches torch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from rerankd.text import visible
from rerankd.v1 import rerank_pb2 as pb
from rerankd_server import __version__, logs, tracing
from rerankd_server.chunking import DEFAULT_MAX_CHUNKS, MAX_CHUNKS_LIMIT, Reduce
from rerankd_server.errors import (
    DeadlineExpired,
    InvalidRequest,
    ModelFailure,
    ModelNotFound,
    NotReady,
    Overloaded,
    RerankdServerError,
)
from rerankd_server.jobs import Usage
from rerankd_server.metrics import Observer
from rerankd_server.protowire import entries_over
from rerankd_server.reranking import ChunkOptions, Normalization, Reranker, RerankOptions
from rerankd_server.scoring.base import Truncation
from rerankd_server.settings import CALL_BYTES, MAX_MODEL_NAME_BYTES, Settings

log = logging.getLogger(__name__)

SERVICE_NAME = "rerankd.v1.RerankService"

#: Trailing metadata of a RESOURCE_EXHAUSTED call: milliseconds to wait before retrying
#: (gRFC A6's server pushback; a client whose retry policy covers the code honours it).
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"

_LOG_LEVEL = {
    grpc.StatusCode.OK: logging.DEBUG,
    grpc.StatusCode.CANCELLED: logging.DEBUG,
    grpc.StatusCode.INTERNAL: logging.WARNING,
}

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


class _Received(NamedTuple):
    """A parsed request and its size on the wire: the bytes it holds until its call is over."""

    message: Any
    size: int


@dataclass(frozen=True)
class _Malformed:
    """Stands in for a request whose bytes did not parse, so it gets INVALID_ARGUMENT."""

    error: str
    request_id: str = ""  # a RerankStream item's id, when it could still be read


_NORMALIZATION: dict[int, Normalization | None] = {
    pb.NORMALIZATION_UNSPECIFIED: None,
    pb.NORMALIZATION_MODEL: Normalization.MODEL,
    pb.NORMALIZATION_RAW: Normalization.RAW,
    pb.NORMALIZATION_SIGMOID: Normalization.SIGMOID,
}

_REDUCE = {
    pb.CHUNK_REDUCE_UNSPECIFIED: Reduce.MAX,
    pb.CHUNK_REDUCE_MAX: Reduce.MAX,
    pb.CHUNK_REDUCE_MEAN: Reduce.MEAN,
    pb.CHUNK_REDUCE_FIRST: Reduce.FIRST,
}


class RerankServicer:
    """Implements rerankd.v1.RerankService over the served model(s)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: dict[str, Reranker] = {}
        # Every model the server was started with: those not added yet are still loading.
        self._configured = {name for name, _ in settings.model_specs()}
        self.draining = False
        self._in_flight = 0
        self._held_bytes = 0  # of the requests whose calls are not over
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def max_documents(self) -> int:
        """Most documents a Rerank call (pairs a Score call) may hold."""
        return self._settings.max_documents

    def call_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def call_ended(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def hold(self, size: int) -> int:
        """Count ``size`` bytes (a request's, and ``CALL_BYTES`` for a call itself) as held
        until ``release``, or refuse them (RESOURCE_EXHAUSTED). Every call within the per-call
        limits may still be large, and the queue bounds count pairs and tokens, not bytes:
        without this, 48 calls of 7 MB sent at once grew the server by 868 MiB while they
        waited for the model."""
        limit = self._settings.max_queue_bytes
        if self._held_bytes + size > limit:
            raise Overloaded(
                f"queue full ({self._held_bytes} bytes held by calls not yet over, {size} more "
                f"asked for; the bound is {limit}, --max-queue-bytes); retry later"
            )
        self._held_bytes += size
        return size

    def release(self, size: int) -> None:
        self._held_bytes -= size

    @property
    def held_bytes(self) -> int:
        """Request bytes of the calls not yet over and ``CALL_BYTES`` for each of them (what
        ``--max-queue-bytes`` bounds)."""
        return self._held_bytes

    async def drain(self, grace: float) -> bool:
        """Refuse new calls (UNAVAILABLE) and wait up to ``grace`` seconds for accepted ones.

        Returns whether every accepted call finished. Refusing in the servicer while the port
        stays open gives new calls a clean UNAVAILABLE, which clients retry elsewhere, rather
        than a reset stream from a server that is closing.
        """
        self.draining = True
        if self._idle.is_set():  # wait_for with no time left fails even an Event already set
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True

    def add_model(self, model: Reranker) -> None:
        """Start routing requests for ``model.name`` (the first model added is the default)."""
        self._models[model.name] = model

    async def Rerank(self, request: pb.RerankRequest, context: Any) -> pb.RerankResponse:
        return await self._rerank(request, _deadline(context))

    async def _rerank(self, request: pb.RerankRequest, deadline: float | None) -> pb.RerankResponse:
        model = self._model(request.model)
        self._check_query(request.query, "query")
        self._check_count(len(request.documents), "documents")
        # Each document read once, for its text and id: every read from a repeated field makes
        # a new wrapper object (two reads made a 100-document call a tenth dearer).
        documents = [(doc.text, doc.id) for doc in request.documents]
        texts = [text for text, _ in documents]
        self._check_texts(texts, "documents[{}].text")
        options = RerankOptions(
            truncation=_truncation(request.truncation),
            normalization=_normalization(request.raw_scores, request.normalization),
            chunking=_chunking(request.chunking) if request.HasField("chunking") else None,
            top_n=request.top_n,
            min_score=_min_score(request),
        )
        ranking, usage = await model.rerank(request.query, texts, options, deadline)
        response = pb.RerankResponse(model=model.name, usage=_usage_pb(usage))
        add, chunks = response.results.add, ranking.chunks
        with_text = request.return_documents
        for index, score in zip(ranking.indices, ranking.scores, strict=True):
            text, doc_id = documents[index]
            result = add(index=index, id=doc_id, score=score)  # in place: half a list's time
            if with_text:
                result.text = text
            if chunks is not None:
                result.chunk.CopyFrom(pb.ChunkInfo(**dataclasses.asdict(chunks[index])))
        return response

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:
        model = self._model(request.model)
        self._check_count(len(request.pairs), "pairs")
        pairs = [(pair.query, pair.text) for pair in request.pairs]
        for i, (query, _) in enumerate(pairs):
            self._check_query(query, f"pairs[{i}].query")
        self._check_texts([text for _, text in pairs], "pairs[{}].text")
        scores, usage = await model.score(
            pairs,
            _truncation(request.truncation),
            _normalization(request.raw_scores, request.normalization),
            _deadline(context),
        )
        return pb.ScoreResponse(scores=scores.tolist(), model=model.name, usage=_usage_pb(usage))

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: Any
    ) -> pb.GetModelInfoResponse:
        model = self._model(request.model)
        s = self._settings
        return pb.GetModelInfoResponse(
            model=_model_info(model),
            models=[_model_info(m) for m in self._models.values()],
            limits=pb.RequestLimits(
                max_documents=s.max_documents,
                max_query_bytes=s.max_query_bytes,
                max_document_bytes=s.max_document_bytes,
                max_message_bytes=s.max_message_bytes,
                max_stream_in_flight=s.stream_max_in_flight,
            ),
            server_version=__version__,
        )

    async def RerankStream(self, requests: AsyncIterator[Any], context: Any) -> None:
        """Answer each request as it finishes, with at most ``stream_max_in_flight`` at once.

        A permit is taken before a request is read and given back only once its response has
        been written, and writes wait for the client's flow control: a slow reader stops the
        reading, so the server never buffers more than the permits allow. A request's bytes
        count against ``--max-queue-bytes`` until its response is written, or the stream ends.
        """
        permits = asyncio.Semaphore(self._settings.stream_max_in_flight)
        outbox: asyncio.Queue[tuple[pb.RerankStreamResponse, int] | None] = asyncio.Queue()
        deadline = _deadline(context)
        unwritten = 0  # request bytes of the items read whose responses are not written

        async def answer(item: Any) -> None:
            nonlocal unwritten
            held = 0
            if isinstance(item, _Malformed):
                reply = pb.RerankStreamResponse(
                    request_id=item.request_id, code=_code(InvalidRequest), message=item.error
                )
            else:
                message, size = item
                reply = pb.RerankStreamResponse(request_id=message.request_id)
                try:
                    held = self.hold(size)
                    unwritten += held
                    reply.response.CopyFrom(await self._rerank(message.request, deadline))
                except RerankdServerError as exc:
                    reply.code, reply.message = _code(type(exc)), str(exc)
                except Exception:
                    log.exception("unexpected error in RerankStream item %r", reply.request_id)
                    reply.code = grpc.StatusCode.INTERNAL.value[0]
                    reply.message = "internal error; see the server log"
            await outbox.put((reply, held))

        async def read() -> None:
            tasks: set[asyncio.Task[None]] = set()
            items = aiter(requests)
            try:
                while True:
                    await permits.acquire()  # before reading: a request is parsed as it is read
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        break
                    task = asyncio.create_task(answer(item))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)  # none holds bytes after
                await outbox.put(None)

        reader = asyncio.create_task(read())
        try:
            while (entry := await outbox.get()) is not None:
                reply, held = entry
                await context.write(reply)
                unwritten -= held
                self.release(held)
                permits.release()
            await reader  # surfaces a failed read (e.g. the client cancelled)
        finally:
            reader.cancel()
            try:
                await asyncio.gather(reader, return_exceptions=True)
            finally:
                self.release(unwritten)  # items never answered on the wire: the stream is over

    def _model(self, requested: str) -> Reranker:
        if self.draining:
            raise NotReady("the server is shutting down; use another replica")
        if not self._models:
            raise NotReady("the model is still loading; retry shortly")
        if not requested:
            return next(iter(self._models.values()))
        size = len(requested.encode("utf-8"))
        if size > MAX_MODEL_NAME_BYTES:
            raise InvalidRequest(f"model has {size} bytes; the limit is {MAX_MODEL_NAME_BYTES}")
        model = self._models.get(requested)
        if model is None:
            # Echo a prefix only: the name is the caller's, and goes into the status and the log.
            name = logs.shown(requested)
            if requested in self._configured:  # UNAVAILABLE, which clients retry
                raise NotReady(f"model {name} is still loading; retry shortly")
            served = ", ".join(sorted(self._models))
            raise ModelNotFound(f"model {name} is not served here (served: {served})")
        return model

    def _check_query(self, query: str, field: str) -> None:
        if not visible(query):
            raise InvalidRequest(f"{field} is empty (no visible character)")
        size = len(query.encode("utf-8"))
        if size > self._settings.max_query_bytes:
            raise InvalidRequest(
                f"{field} has {size} bytes; the limit is {self._settings.max_query_bytes}"
            )

    def _check_texts(self, texts: list[str], field: str) -> None:
        """Each text within ``max_document_bytes``; a text of at most a quarter as many
        characters fits whatever they are (UTF-8 takes at most 4 bytes each): not encoded."""
        limit = self._settings.max_document_bytes
        if max(map(len, texts), default=0) * 4 <= limit:
            return
        for i, text in enumerate(texts):
            size = len(text.encode("utf-8"))
            if size > limit:
                raise InvalidRequest(f"{field.format(i)} has {size} bytes; the limit is {limit}")

    def _check_count(self, count: int, field: str) -> None:
        if count == 0:
            raise InvalidRequest(f"no {field} given")
        if count > self._settings.max_documents:
            raise InvalidRequest(
                f"{count} {field} given; the limit is {self._settings.max_documents}"
            )


def _deadline(context: Any) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


def _code(error: type[RerankdServerError]) -> int:
    code: int = _STATUS[error].value[0]
    return code


def _min_score(request: pb.RerankRequest) -> float | None:
    if not request.HasField("min_score"):
        return None
    if math.isnan(request.min_score):
        raise InvalidRequest("min_score is NaN; send a number or leave it unset")
    return request.min_score


def _truncation(value: int) -> Truncation:
    mode = _TRUNCATION.get(value)
    if mode is None:
        raise InvalidRequest(f"unknown truncation value {value}")
    return mode


def _normalization(raw_scores: bool, value: int) -> Normalization:
    if value not in _NORMALIZATION:
        raise InvalidRequest(f"unknown normalization value {value}")
    chosen = _NORMALIZATION[value]
    if raw_scores and chosen not in (None, Normalization.RAW):
        raise InvalidRequest("raw_scores contradicts the normalization asked for")
    if chosen is None:
        return Normalization.RAW if raw_scores else Normalization.MODEL
    return chosen


def _chunking(message: pb.Chunking) -> ChunkOptions:
    if message.max_chunks > MAX_CHUNKS_LIMIT:
        raise InvalidRequest(
            f"chunking.max_chunks is {message.max_chunks}; at most {MAX_CHUNKS_LIMIT}"
        )
    if message.reduce not in _REDUCE:
        raise InvalidRequest(f"unknown chunking.reduce value {message.reduce}")
    return ChunkOptions(
        max_chunks=message.max_chunks or DEFAULT_MAX_CHUNKS,
        overlap_tokens=message.overlap_tokens,
        reduce=_REDUCE[message.reduce],
    )


def _model_info(model: Reranker) -> pb.ModelInfo:
    info, config = model.scorer.info, model.config
    return pb.ModelInfo(
        name=model.name,
        max_input_tokens=info.max_input_tokens,
        activation=info.activation,
        dtype=info.dtype,
        device=info.device,
        attention_implementation=info.attention_implementation,
        modules=info.modules,
        batching=pb.BatchingLimits(
            max_batch_tokens=config.limits.max_batch_tokens,
            max_batch_size=config.limits.max_batch_size,
            padded_batches=config.limits.padded,
            max_queue_pairs=config.max_queue_pairs,
            max_queue_tokens=config.max_queue_tokens,
        ),
    )


def _usage_pb(usage: Usage) -> pb.Usage:
    return pb.Usage(
        input_tokens=usage.input_tokens,
        truncated_pairs=usage.truncated_pairs,
        queue_time_us=usage.queue_time_us,
        inference_time_us=usage.inference_time_us,
        batches=usage.batches,
        cached_pairs=usage.cached_pairs,
        scored_pairs=usage.scored_pairs,
    )


Request = TypeVar("Request")
Response = TypeVar("Response")


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
        if not tracing.enabled():
            return await run(request, context, None)
        with tracing.server_span(name, context.invocation_metadata()) as span:
            return await run(request, context, span)

    async def run(request: Any, context: Any, span: Any) -> Response:
        started = time.perf_counter()
        request_id = logs.request_id(context)
        # Trailing, not initial, metadata: headers sent early make a call final for gRPC's
        # retries, so a call on a replica that dies could no longer move to another one.
        trailers: tuple[tuple[str, str], ...] = (("x-request-id", request_id),)
        context.set_trailing_metadata(trailers)
        code, message = grpc.StatusCode.OK, ""
        size = CALL_BYTES  # the call itself; a stream's items are held one by one, by the method
        if isinstance(request, _Received):
            request, received = request
            size += received
        servicer.call_started()
        try:
            if isinstance(request, _Malformed):
                code, message = grpc.StatusCode.INVALID_ARGUMENT, request.error
            else:
                servicer.hold(size)
                # Given back once gRPC has ended the call, not when the handler returns: the
                # answer (as large as the request with return_documents) waits in gRPC until
                # the client reads it, and a client that never does kept it there unbounded.
                context.add_done_callback(lambda _: servicer.release(size))
                response = await method(request, context)
                if not _past_deadline(context):
                    return response
                # gRPC may have ended the call already: returning now would make it send a
                # status, fail in core and log that at ERROR; the error path below ends it.
                code, message = grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed"
        except RerankdServerError as exc:
            code, message = _STATUS[type(exc)], str(exc)
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:  # gRPC's own pushback hint (honoured by its retries)
                pushback = str(max(1, math.ceil(retry_after * 1000)))
                context.set_trailing_metadata((*trailers, (RETRY_PUSHBACK_KEY, pushback)))
        except asyncio.CancelledError:  # gRPC ends a call so when its deadline passes, too
            code = _ended(context)
            raise
        except grpc.aio.InternalError:  # a stream's write failed in gRPC's core: the call is over
            code = _ended(context)
            raise asyncio.CancelledError from None
        except Exception:
            log.exception("unexpected error in %s (request %s)", name, request_id)
            code, message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        finally:
            servicer.call_ended()
            seconds = time.perf_counter() - started
            if observe is not None:
                observe(name, code.name, seconds)
            # One record per call: DEBUG when it succeeded (thousands a second would cost the
            # event loop more than the call), INFO for a refused call, WARNING for INTERNAL.
            level = _LOG_LEVEL.get(code, logging.INFO)
            if span is not None or log.isEnabledFor(level):
                fields = {
                    "request_id": request_id,
                    "method": name,
                    "code": code.name,
                    "duration_ms": round(seconds * 1000, 3),
                    "items": _items(request),
                }
                if span is not None:
                    span.set_attributes({f"rerankd.{k}": v for k, v in fields.items()})
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                log.log(
                    level,
                    "%s %s %.1fms id=%s %s",
                    name,
                    code.name,
                    seconds * 1000,
                    request_id,
                    message,
                    extra=fields,
                )
        # The deadline passed (or the client left) while this error was on its way: gRPC has
        # ended the call, so there is no one to tell, and the abort fails in gRPC's core, which
        # logs a traceback at ERROR unless the handler ends as cancelled. ``done()`` knows only
        # once the event loop has heard of the end; a failed abort covers the rest.
        if context.done():
            raise asyncio.CancelledError
        try:
            await context.abort(code, message)
        except grpc.aio.InternalError:  # the status could not be sent: the call is over
            raise asyncio.CancelledError from None
        raise AssertionError("unreachable: context.abort raises")

    return handler


def _ended(context: Any) -> grpc.StatusCode:
    """Why gRPC ended a call under its handler: its deadline passed, or the client left."""
    past = _past_deadline(context)
    return grpc.StatusCode.DEADLINE_EXCEEDED if past else grpc.StatusCode.CANCELLED


def _past_deadline(context: Any) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


#: Where each request's documents (or pairs) lie on the wire, counted before parsing.
_ENTRIES: dict[type[Any], tuple[tuple[int, ...], str]] = {
    pb.RerankRequest: ((2,), "documents"),
    pb.ScoreRequest: ((1,), "pairs"),
    pb.RerankStreamRequest: ((2, 2), "documents"),
}


def _parser(message: type[Any], max_entries: int) -> Callable[[bytes], Any]:
    """The request deserializer. A request with more than ``max_entries`` documents (pairs)
    is refused before parsing: 8 MB of empty documents would parse to 224 MB first."""
    path, name = _ENTRIES.get(message, ((), ""))
    stream_item = message is pb.RerankStreamRequest

    def parse(data: bytes) -> _Received | _Malformed:
        if path and entries_over(data, path, max_entries):
            error = f"more than {max_entries} {name} given; the limit is {max_entries}"
            return _Malformed(error, _stream_request_id(data) if stream_item else "")
        try:
            return _Received(message.FromString(data), len(data))
        except (DecodeError, UnicodeDecodeError) as exc:
            error = f"request is not a valid {message.DESCRIPTOR.full_name}: {exc}"
            return _Malformed(error, _stream_request_id(data) if stream_item else "")

    return parse


def _stream_request_id(data: bytes) -> str:
    """The ``request_id`` of a RerankStreamRequest whose ``request`` did not parse, or "".

    ``google.protobuf.Any`` has the same wire shape (1: string, 2: bytes), so it reads the id
    and leaves the broken request as bytes. It cannot when the item's own framing is broken
    (a bad tag or length outside ``request``) or the id itself is not valid UTF-8.
    """
    try:
        return str(any_pb2.Any.FromString(data).type_url)
    except (DecodeError, UnicodeDecodeError):
        return ""


def handlers(
    servicer: RerankServicer, observe: Observer | None = None
) -> dict[str, grpc.RpcMethodHandler]:
    """The service's method handlers by name, with parse errors reported as INVALID_ARGUMENT."""
    methods = {
        "Rerank": (servicer.Rerank, pb.RerankRequest),
        "Score": (servicer.Score, pb.ScoreRequest),
        "GetModelInfo": (servicer.GetModelInfo, pb.GetModelInfoRequest),
    }
    limit = servicer.max_documents
    return {
        name: grpc.unary_unary_rpc_method_handler(
            _guarded(name, method, observe, servicer),
            request_deserializer=_parser(message, limit),
            response_serializer=_serialize,
        )
        for name, (method, message) in methods.items()
    } | {
        "RerankStream": grpc.stream_stream_rpc_method_handler(
            _guarded("RerankStream", servicer.RerankStream, observe, servicer),
            request_deserializer=_parser(pb.RerankStreamRequest, limit),
            response_serializer=_serialize,
        )
    }


def _serialize(response: Any) -> bytes:
    data: bytes = response.SerializeToString()
    return data
