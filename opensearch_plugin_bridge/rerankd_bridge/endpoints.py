"""HTTP rerank endpoints in the shapes engines and existing callers already speak.

So a search engine can call rerankd itself, and callers of other rerankers switch by URL:

- ``POST /v1/rerank`` and ``POST /v2/rerank``: Cohere's rerank API (v1: ml-commons' Cohere
  connector blueprint, Elasticsearch's ``custom`` service, ``cohere.Client``; v2:
  ``cohere.ClientV2``, LangChain's ``CohereRerank``, LlamaIndex's ``CohereRerank``):
  ``{"query", "documents": [str | {field: str}], "rank_fields"?, "top_n"?,
  "return_documents"?}`` -> ``{"id", "results": [{"index", "relevance_score",
  "document"?}], "meta"}``. A ``model`` field is ignored (callers always send a Cohere model
  name); ``max_tokens_per_doc`` and ``max_chunks_per_doc`` are accepted and the model's own
  maximum length applies.
- ``POST /_inference/rerank/{inference_id}``, ``/_inference/rerank`` and
  ``/_inference/{inference_id}`` (a body with a ``query``: the rerank task): Elasticsearch's
  inference API: ``{"query", "input": str | [str], "top_n"?, "return_documents"?,
  "task_settings"?}`` -> ``{"rerank": [{"index", "relevance_score", "text"?}]}``, with the
  ``X-Elastic-Product: Elasticsearch`` header its client checks.
- ``POST /rerank``: text-embeddings-inference: ``{"query", "texts", "raw_scores"?,
  "return_text"?, "truncate"?, "truncation_direction"?}`` -> ``[{"index", "score",
  "text"?}]``; with ``GET /info`` (the model, from ``GetModelInfo``) and ``GET /health``,
  which TEI's clients call first.

All answer best first, ties by input order, and map errors to each API's error shape: a
malformed request or invalid input 400 (TEI: 422), unknown model 404, overload 429,
unavailable 503, deadline 504, any other failure of the reranker 502. Document texts are cut
to what the model can read before they are sent, unless the caller asked for over-long input
to be refused (TEI's ``truncate: false``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from rerankd import AsyncClient, InvalidArgument, ModelInfo, RerankdError, Reranked, Truncation
from rerankd.errors import DeadlineExceeded, NotFound, ResourceExhausted, Unavailable
from rerankd_bridge.filter_path import apply_filter_path
from rerankd_bridge.ranking import MAX_TIMEOUT
from rerankd_bridge.search import TextBudget, async_model_info, fit_query
from rerankd_bridge.text import clean_text
from rerankd_bridge.wire import (
    BodyTooLarge,
    Score,
    accepted_coding,
    dumps,
    error_body,
    inflate,
    loads,
)

__all__ = [
    "BadRequest",
    "RerankAsk",
    "add_routes",
    "cohere_ask",
    "elastic_ask",
    "reply",
    "tei_ask",
    "tei_info",
]

_HTTP_BY_ERROR: tuple[tuple[type[RerankdError], int], ...] = (
    (InvalidArgument, 400),
    (NotFound, 404),
    (ResourceExhausted, 429),
    (Unavailable, 503),
    (DeadlineExceeded, 504),
)
_OTHER_RERANKER_ERROR = 502  # e.g. UNAUTHENTICATED: the bridge's credentials, not the caller's

_ELASTIC_HEADERS = {"X-Elastic-Product": "Elasticsearch"}


@dataclass(frozen=True)
class RerankAsk:
    """One HTTP rerank request, whatever its dialect, as rerankd understands it.

    ``documents`` are the texts to score; ``given`` the documents as the caller sent them
    (what ``return_documents`` echoes: Cohere returns an object document whole).
    """

    query: str
    documents: list[str]
    top_n: int = 0
    return_documents: bool = False
    raw_scores: bool = False
    truncation: Truncation = "default"
    given: list[Any] = field(default_factory=list)

    def echoed(self, index: int) -> Any:
        """The document at ``index`` as the caller sent it."""
        return self.given[index] if self.given else self.documents[index]


class BadRequest(ValueError):
    """The HTTP body does not follow the dialect's request shape."""


def cohere_ask(payload: Any) -> RerankAsk:
    """Read a Cohere ``/v1/rerank`` or ``/v2/rerank`` body.

    A document is a string or an object of string fields; ``rank_fields`` (default
    ``["text"]``) name the fields scored: one field is scored as its value, several as
    ``field: value`` lines in the order given (the YAML form Cohere recommends for
    structured documents). ``top_n`` beyond the number of documents returns them all.
    """
    body = _object(payload)
    fields = _rank_fields(body.get("rank_fields"))
    given = _list(body, "documents")
    for name in ("max_tokens_per_doc", "max_chunks_per_doc"):
        if body.get(name) is not None:
            _positive(body[name], name)
    if body.get("relevant_spans") is not None:
        raise BadRequest("relevant_spans is not supported")
    return RerankAsk(
        _text(body.get("query"), "query"),
        [_cohere_text(doc, fields, i) for i, doc in enumerate(given)],
        top_n=_count(body.get("top_n")),
        return_documents=_flag(body.get("return_documents"), "return_documents"),
        given=given,
    )


def elastic_ask(payload: Any) -> RerankAsk:
    """Read an Elasticsearch ``_inference/rerank`` body (task_settings may hold the options)."""
    body = _object(payload)
    settings = {**_object(body.get("task_settings", {}), "task_settings"), **body}
    raw = body.get("input")
    docs = [raw] if isinstance(raw, str) else _list(body, "input")
    return RerankAsk(
        _text(body.get("query"), "query"),
        [_text(d, f"input[{i}]", blank=True) for i, d in enumerate(docs)],
        top_n=_count(settings.get("top_n")),
        return_documents=_flag(settings.get("return_documents"), "return_documents"),
    )


def tei_ask(payload: Any) -> RerankAsk:
    """Read a text-embeddings-inference ``/rerank`` body.

    ``truncate`` absent keeps the model's own truncation; ``false`` refuses over-long input,
    as TEI does; ``true`` cuts on the side ``truncation_direction`` names (Right: the end).
    """
    body = _object(payload)
    truncation: Truncation = "default"
    if "truncate" in body:
        if not _flag(body["truncate"], "truncate"):
            truncation = "none"
        else:
            truncation = "start" if body.get("truncation_direction") == "Left" else "end"
    return RerankAsk(
        _text(body.get("query"), "query"),
        [_text(d, f"texts[{i}]", blank=True) for i, d in enumerate(_list(body, "texts"))],
        return_documents=_flag(body.get("return_text"), "return_text"),
        raw_scores=_flag(body.get("raw_scores"), "raw_scores"),
        truncation=truncation,
    )


def _cohere_answer(version: str) -> Callable[[RerankAsk, Reranked], Any]:
    def answer(ask: RerankAsk, reranked: Reranked) -> Any:
        results = []
        for r in reranked.results:
            item: dict[str, Any] = {"index": r.index, "relevance_score": Score(r.score)}
            if ask.return_documents:
                doc = ask.echoed(r.index)
                item["document"] = doc if isinstance(doc, Mapping) else {"text": doc}
            results.append(item)
        return {
            "id": str(uuid.uuid4()),
            "results": results,
            "meta": {"api_version": {"version": version}, "billed_units": {"search_units": 1}},
        }

    return answer


def elastic_answer(ask: RerankAsk, reranked: Reranked) -> Any:
    return {"rerank": [_scored(ask, r.index, r.score, "relevance_score") for r in reranked.results]}


def tei_answer(ask: RerankAsk, reranked: Reranked) -> Any:
    return [_scored(ask, r.index, r.score, "score") for r in reranked.results]


def tei_info(info: ModelInfo) -> dict[str, Any]:
    """TEI's ``/info`` for the served model: what TEI's clients read before reranking.

    rerankd has no fixed concurrency or tokenizer-worker count, so those are null.
    """
    return {
        "model_id": info.name,
        "model_sha": None,
        "model_dtype": info.dtype,
        "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
        "prompts": None,
        "default_prompt": None,
        "max_concurrent_requests": None,
        "max_input_length": info.max_input_tokens,
        "max_batch_tokens": info.batching.max_batch_tokens,
        "max_batch_requests": info.batching.max_batch_size,
        "max_client_batch_size": info.limits.max_documents,
        "auto_truncate": True,
        "tokenization_workers": None,
        "version": info.server_version,
        "sha": None,
        "docker_label": None,
    }


def _scored(ask: RerankAsk, index: int, score: float, name: str) -> dict[str, Any]:
    item: dict[str, Any] = {"index": index, name: Score(score)}
    if ask.return_documents:
        item["text"] = ask.documents[index]
    return item


def cohere_error(status: int, message: str) -> Any:
    return {"message": message}


def elastic_error(status: int, message: str) -> Any:
    kinds = {404: "resource_not_found_exception"} | dict.fromkeys(
        (400, 413, 415), "illegal_argument_exception"
    )
    return error_body(status, kinds.get(status, "rerank_exception"), message)


def tei_error(status: int, message: str) -> Any:
    kinds = {400: "Validation", 404: "Validation", 413: "Validation", 415: "Validation"}
    kinds |= {422: "Validation", 429: "Overloaded", 503: "Unhealthy"}
    return {"error": message, "error_type": kinds.get(status, "Backend")}


@dataclass(frozen=True)
class Dialect:
    """How one API reads requests, writes answers and errors, and which headers it adds."""

    read: Callable[[Any], RerankAsk]
    answer: Callable[[RerankAsk, Reranked], Any]
    error: Callable[[int, str], Any]
    invalid_status: int = 400
    headers: Mapping[str, str] = field(default_factory=dict)


COHERE_V1 = Dialect(cohere_ask, _cohere_answer("1"), cohere_error)
COHERE_V2 = Dialect(cohere_ask, _cohere_answer("2"), cohere_error)
ELASTIC = Dialect(elastic_ask, elastic_answer, elastic_error, headers=_ELASTIC_HEADERS)
TEI = Dialect(tei_ask, tei_answer, tei_error, invalid_status=422)

DIALECTS: dict[str, Dialect] = {
    "/v1/rerank": COHERE_V1,
    "/v2/rerank": COHERE_V2,
    "/_inference/rerank": ELASTIC,
    "/_inference/rerank/{inference_id}": ELASTIC,
    "/rerank": TEI,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(
    app: web.Application,
    reranker: Callable[[], AsyncClient],
    timeout: float,
    max_body_bytes: int,
    fallback: Handler,
) -> None:
    """Serve every dialect on ``app``; ``reranker`` gives the client (made at start-up).

    ``fallback`` answers what only looks like ours: ``POST /_inference/{id}`` without a
    ``query`` (another inference task, for the engine).
    """
    serve = _Endpoints(reranker, timeout, max_body_bytes)
    for path, dialect in DIALECTS.items():
        app.router.add_post(path, serve.handler(dialect))
    app.router.add_post("/_inference/{inference_id}", serve.handler(ELASTIC, fallback))
    app.router.add_get("/info", serve.info)
    app.router.add_get("/health", serve.health)


@dataclass(frozen=True)
class _Endpoints:
    reranker: Callable[[], AsyncClient]
    timeout: float
    max_body_bytes: int

    def handler(self, dialect: Dialect, fallback: Handler | None = None) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                payload = loads(await _body(request, self.max_body_bytes) or b"null")
            except BodyTooLarge as err:
                return _answer(request, dialect, 413, dialect.error(413, str(err)))
            except ValueError as err:
                if fallback is not None:  # not recognisably ours: the engine judges it
                    return await fallback(request)
                if isinstance(err, _Unreadable):
                    return _answer(request, dialect, 415, dialect.error(415, str(err)))
                status, message = dialect.invalid_status, f"the body is not valid JSON: {err}"
                return _answer(request, dialect, status, dialect.error(status, message))
            if fallback is not None and not (isinstance(payload, Mapping) and "query" in payload):
                return await fallback(request)
            try:
                ask = dialect.read(payload)
                timeout = _timeout(request, dialect, self.timeout)
            except BadRequest as err:
                status = dialect.invalid_status
                return _answer(request, dialect, status, dialect.error(status, str(err)))
            try:
                reranked = await self._rerank(ask, timeout)
            except RerankdError as err:
                status = _status(err, dialect)
                return _answer(request, dialect, status, dialect.error(status, str(err)))
            answer = dialect.answer(ask, reranked)
            if dialect is ELASTIC:  # Elasticsearch filters any answer by its filter_path
                paths = ",".join(request.query.getall("filter_path", []))
                answer = apply_filter_path(answer, paths)
            return _answer(request, dialect, 200, answer)

        return handle

    async def _rerank(self, ask: RerankAsk, timeout: float) -> Reranked:
        client = self.reranker()
        query = clean_text(ask.query)
        texts = [clean_text(d) for d in ask.documents]
        if ask.truncation != "none":  # "none" must see the whole text to refuse it
            info = await async_model_info(client, "", timeout)
            query = fit_query(info, query)
            budget = TextBudget.of(info, query, len(texts))
            texts = [budget.fit(d) for d in texts]
        return await client.rerank(
            query,
            texts,
            top_n=min(ask.top_n, len(texts)),
            raw_scores=ask.raw_scores,
            truncation=ask.truncation,
            timeout=timeout,
        )

    async def info(self, request: web.Request) -> web.StreamResponse:
        try:
            info = await self.reranker().model_info(timeout=self.timeout)
        except RerankdError as err:
            status = _status(err, TEI)
            return _answer(request, TEI, status, tei_error(status, str(err)))
        return _answer(request, TEI, 200, tei_info(info))

    async def health(self, request: web.Request) -> web.StreamResponse:
        """200 with an empty body while the model answers, as TEI; else 503."""
        try:
            await self.reranker().model_info(timeout=self.timeout)
        except RerankdError as err:
            return _answer(request, TEI, 503, tei_error(503, str(err)))
        return web.Response(status=200)


class _Unreadable(ValueError):
    """A request body in a content encoding the bridge cannot decode."""


async def _body(request: web.Request, limit: int) -> bytes:
    """The request body, decoded from its Content-Encoding."""
    encoding = request.headers.get("Content-Encoding", "")
    body = inflate(await request.read(), encoding, limit)
    if body is None:
        raise _Unreadable(f"cannot decode a body with Content-Encoding {encoding!r}")
    return body


def _status(err: RerankdError, dialect: Dialect) -> int:
    status = next((s for kind, s in _HTTP_BY_ERROR if isinstance(err, kind)), None)
    if status is None:
        return _OTHER_RERANKER_ERROR
    return dialect.invalid_status if status == 400 else status


_TIME_UNITS = {"nanos": 1e-9, "micros": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TIME_VALUE = re.compile(r"(\d+(?:\.\d+)?)(nanos|micros|ms|s|m|h)")


def _timeout(request: web.Request, dialect: Dialect, default: float) -> float:
    """The call's deadline in seconds: an Elasticsearch inference call's ``timeout`` query
    parameter (a time value, ``30s``; at most ``MAX_TIMEOUT``), else the bridge's own."""
    raw = request.query.get("timeout") if dialect is ELASTIC else None
    if raw is None:
        return default
    match = _TIME_VALUE.fullmatch(raw.strip())
    seconds = float(match[1]) * _TIME_UNITS[match[2]] if match else 0.0
    if not 0 < seconds <= MAX_TIMEOUT:
        raise BadRequest(
            f"timeout must be a time value above 0 and at most {MAX_TIMEOUT:g}s, such as 30s "
            f"or 500ms, not {raw!r}"
        )
    return seconds


def _answer(request: web.Request, dialect: Dialect, status: int, payload: Any) -> web.Response:
    return reply(request, status, payload, dialect.headers)


def reply(
    request: web.Request, status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON answer written by :func:`~rerankd_bridge.wire.dumps` (indented for ``?pretty``,
    as the engines do), compressed with gzip or deflate when the request accepts one (gzip
    first); ``headers`` are added to it."""
    pretty = request.query.get("pretty", "false") != "false"
    response = web.Response(status=status, body=dumps(payload, pretty), headers=headers)
    response.headers.setdefault("Content-Type", "application/json; charset=UTF-8")
    coding = accepted_coding(request.headers.get("Accept-Encoding", ""))
    if coding is not None:
        response.enable_compression(web.ContentCoding(coding))
    return response


def _object(value: Any, name: str = "the request body") -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadRequest(f"{name} must be a JSON object")
    return value


def _list(body: Mapping[str, Any], name: str) -> list[Any]:
    value = body.get(name)
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{name} must be a non-empty array")
    return value


def _text(value: Any, name: str, *, blank: bool = False) -> str:
    if not isinstance(value, str) or not (blank or value.strip()):
        raise BadRequest(f"{name} must be a {'string' if blank else 'non-blank string'}")
    return value


def _rank_fields(value: Any) -> list[str]:
    if value is None:
        return ["text"]
    if not isinstance(value, list) or not value or not all(isinstance(f, str) for f in value):
        raise BadRequest(f"rank_fields must be a non-empty array of strings, not {value!r}")
    return value


def _cohere_text(doc: Any, fields: list[str], index: int) -> str:
    if isinstance(doc, str):
        return doc
    if not isinstance(doc, Mapping):
        raise BadRequest(f"documents[{index}] must be a string or an object")
    found = [(f, doc[f]) for f in fields if f in doc]
    if not found:
        raise BadRequest(f"documents[{index}] has none of the rank_fields {fields}")
    for name, value in found:
        _text(value, f"documents[{index}].{name}", blank=True)
    if len(fields) == 1:
        return str(found[0][1])
    return "\n".join(f"{name}: {value}" for name, value in found)


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"top_n must be a non-negative integer, not {value!r}")
    return value


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{name} must be a positive integer, not {value!r}")
    return value


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, not {value!r}")
    return value
