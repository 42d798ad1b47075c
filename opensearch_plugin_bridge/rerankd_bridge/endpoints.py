"""HTTP rerank endpoints in the shapes engines and existing callers already speak.

So a search engine can call rerankd itself, and callers of other rerankers switch by URL:

- ``POST /v1/rerank``: Cohere's rerank API, as OpenSearch ml-commons' Cohere connector
  blueprint and Elasticsearch's ``custom`` inference service send it:
  ``{"query", "documents": [str | {"text"}], "top_n"?, "return_documents"?}`` ->
  ``{"id", "results": [{"index", "relevance_score", "document"?: {"text"}}], "meta"}``.
  A ``model`` field is ignored (connectors always send a Cohere model name).
- ``POST /_inference/rerank`` and ``/_inference/rerank/{inference_id}``: Elasticsearch's
  inference API for the rerank task: ``{"query", "input": str | [str], "top_n"?,
  "return_documents"?, "task_settings"?}`` -> ``{"rerank": [{"index", "relevance_score",
  "text"?}]}``.
- ``POST /rerank``: text-embeddings-inference: ``{"query", "texts", "raw_scores"?,
  "return_text"?, "truncate"?, "truncation_direction"?}`` -> ``[{"index", "score", "text"?}]``.

All answer best first, ties by input order, and map rerankd's errors to each API's error
shape: invalid input 400 (TEI: 422), overload 429, unavailable 503, deadline 504.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from rerankd import AsyncClient, InvalidArgument, RerankdError, Reranked, Truncation
from rerankd.errors import DeadlineExceeded, NotFound, ResourceExhausted, Unavailable

__all__ = ["RerankAsk", "add_routes", "cohere_ask", "elastic_ask", "tei_ask"]

_HTTP_BY_ERROR: tuple[tuple[type[RerankdError], int], ...] = (
    (InvalidArgument, 400),
    (NotFound, 404),
    (ResourceExhausted, 429),
    (Unavailable, 503),
    (DeadlineExceeded, 504),
)


@dataclass(frozen=True)
class RerankAsk:
    """One HTTP rerank request, whatever its dialect, as rerankd understands it."""

    query: str
    documents: list[str]
    top_n: int = 0
    return_documents: bool = False
    raw_scores: bool = False
    truncation: Truncation = "default"


class BadRequest(ValueError):
    """The HTTP body does not follow the dialect's request shape."""


def cohere_ask(payload: Any) -> RerankAsk:
    """Read a Cohere ``/v1/rerank`` body (documents as strings or ``{"text": ...}``)."""
    body = _object(payload)
    docs = [d.get("text") if isinstance(d, Mapping) else d for d in _list(body, "documents")]
    return RerankAsk(
        _text(body.get("query"), "query"),
        [_text(d, "documents[]", blank=True) for d in docs],
        top_n=_count(body.get("top_n")),
        return_documents=_flag(body.get("return_documents"), "return_documents"),
    )


def elastic_ask(payload: Any) -> RerankAsk:
    """Read an Elasticsearch ``_inference/rerank`` body (task_settings may hold the options)."""
    body = _object(payload)
    settings = {**_object(body.get("task_settings", {})), **body}
    raw = body.get("input")
    docs = [raw] if isinstance(raw, str) else _list(body, "input")
    return RerankAsk(
        _text(body.get("query"), "query"),
        [_text(d, "input[]", blank=True) for d in docs],
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
        [_text(d, "texts[]", blank=True) for d in _list(body, "texts")],
        return_documents=_flag(body.get("return_text"), "return_text"),
        raw_scores=_flag(body.get("raw_scores"), "raw_scores"),
        truncation=truncation,
    )


def cohere_answer(ask: RerankAsk, reranked: Reranked) -> Any:
    results = []
    for r in reranked.results:
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.score}
        if ask.return_documents:
            item["document"] = {"text": ask.documents[r.index]}
        results.append(item)
    return {
        "id": str(uuid.uuid4()),
        "results": results,
        "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}},
    }


def elastic_answer(ask: RerankAsk, reranked: Reranked) -> Any:
    return {"rerank": [_scored(ask, r.index, r.score, "relevance_score") for r in reranked.results]}


def tei_answer(ask: RerankAsk, reranked: Reranked) -> Any:
    return [_scored(ask, r.index, r.score, "score") for r in reranked.results]


def _scored(ask: RerankAsk, index: int, score: float, name: str) -> dict[str, Any]:
    item: dict[str, Any] = {"index": index, name: score}
    if ask.return_documents:
        item["text"] = ask.documents[index]
    return item


def cohere_error(status: int, message: str) -> Any:
    return {"message": message}


def elastic_error(status: int, message: str) -> Any:
    return {"error": {"type": "rerank_exception", "reason": message}, "status": status}


def tei_error(status: int, message: str) -> Any:
    kinds = {400: "Validation", 404: "Validation", 429: "Overloaded", 503: "Unhealthy"}
    return {"error": message, "error_type": kinds.get(status, "Backend")}


@dataclass(frozen=True)
class Dialect:
    """How one API reads requests, writes answers and errors."""

    read: Callable[[Any], RerankAsk]
    answer: Callable[[RerankAsk, Reranked], Any]
    error: Callable[[int, str], Any]
    invalid_status: int = 400


DIALECTS: dict[str, Dialect] = {
    "/v1/rerank": Dialect(cohere_ask, cohere_answer, cohere_error),
    "/_inference/rerank": Dialect(elastic_ask, elastic_answer, elastic_error),
    "/_inference/rerank/{inference_id}": Dialect(elastic_ask, elastic_answer, elastic_error),
    "/rerank": Dialect(tei_ask, tei_answer, tei_error, invalid_status=422),
}


def add_routes(app: web.Application, reranker: Callable[[], AsyncClient], timeout: float) -> None:
    """Serve every dialect on ``app``; ``reranker`` gives the client (made at start-up)."""
    for path, dialect in DIALECTS.items():
        app.router.add_post(path, _handler(dialect, reranker, timeout))


def _handler(
    dialect: Dialect, reranker: Callable[[], AsyncClient], timeout: float
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        try:
            ask = dialect.read(json.loads(await request.read() or b"null"))
        except (ValueError, BadRequest) as err:
            return _json(dialect.error(dialect.invalid_status, str(err)), dialect.invalid_status)
        try:
            reranked = await reranker().rerank(
                ask.query,
                ask.documents,
                top_n=ask.top_n,
                raw_scores=ask.raw_scores,
                truncation=ask.truncation,
                timeout=timeout,
            )
        except RerankdError as err:
            status = next((s for kind, s in _HTTP_BY_ERROR if isinstance(err, kind)), 500)
            if status == 400:
                status = dialect.invalid_status
            return _json(dialect.error(status, str(err)), status)
        return _json(dialect.answer(ask, reranked), 200)

    return handle


def _json(payload: Any, status: int) -> web.Response:
    return web.json_response(payload, status=status)


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadRequest("the request body must be a JSON object")
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


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"top_n must be a non-negative integer, not {value!r}")
    return value


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, not {value!r}")
    return value
