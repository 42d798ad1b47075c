"""Run a search, rerank it with rerankd, return a response shaped like the engine's.

:class:`SearchJob` holds the whole procedure without I/O (what to ask the engine, what to
send the reranker, how to rewrite the answer, what a failure turns into), so the sync and
async library calls and the HTTP proxy share it and differ only in how they wait.

Each candidate text is cut to what the model can read before it is sent (see
:class:`TextBudget`; the model's limits come from ``GetModelInfo``, asked once per client and
model), so one huge document never fails the whole window.

Failure policy: when the reranker is unreachable, past its deadline, overloaded, or refuses
the request, the caller gets the first-stage order, a ``"rerank": {"status": "skipped",
"reason": ...}`` block and a count in :data:`~rerankd_bridge.stats.STATS`; the delay is
bounded by the options' timeout (the gRPC deadline). With ``strict`` the same cases raise
:class:`RerankFailed`. Errors of the engine itself are never caught here.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rerankd import (
    AsyncClient,
    Client,
    InvalidArgument,
    ModelInfo,
    RerankdError,
    Reranked,
    RerankResult,
    Usage,
)
from rerankd_bridge.filter_path import apply_filter_path
from rerankd_bridge.ranking import (
    Candidate,
    FetchPlan,
    Page,
    RerankOptions,
    apply_ranking,
    candidates,
    first_stage,
    plan_fetch,
    rerank_block,
    to_score,
)
from rerankd_bridge.spec import QuerySource, RerankSpec, parse_spec
from rerankd_bridge.stats import STATS, RerankStats
from rerankd_bridge.text import as_mapping, clean_text, fit_text

if TYPE_CHECKING:
    from elasticsearch import AsyncElasticsearch, Elasticsearch
    from opensearchpy import AsyncOpenSearch, OpenSearch

__all__ = [
    "BadEngineResponse",
    "RerankCall",
    "RerankFailed",
    "SearchJob",
    "TextBudget",
    "async_model_info",
    "async_rerank_search",
    "fit_query",
    "model_info",
    "rerank_async",
    "rerank_conflict",
    "rerank_search",
    "rerank_sync",
    "search_response",
]

# HTTP status the proxy gives a strict-mode failure, by skip reason: the caller's own mistakes
# are 4xx (a client retries 502-504), the rest 503.
_HTTP_STATUS = {
    "deadline_exceeded": 504,
    "resource_exhausted": 429,
    "no_query_text": 400,
    "no_document_text": 400,
    "invalid_argument": 400,
    "not_found": 404,
}

CHARS_PER_TOKEN = 32
"""Characters kept per model input token: real text has 3-6, so the cut never reaches what
the model reads, and the server's own clip (the same bound, checked) does the exact work."""

# Room in a request message for everything but the document texts, and per document.
_MESSAGE_SLACK = 4096
_PER_DOCUMENT_SLACK = 16


class BadEngineResponse(Exception):
    """The engine answered a search with something that is not a search response."""


def search_response(value: Any) -> dict[str, Any]:
    """``value`` when it has a search response's shape (an object; ``hits`` an object whose
    ``hits`` is a list of objects), so reranking can read it.

    Raises:
        BadEngineResponse: anything else (an HTML page, an array, hits of another shape).
    """
    if not isinstance(value, Mapping):
        raise BadEngineResponse(f"the engine's answer is a JSON {type(value).__name__}")
    hits = value.get("hits", {})
    inner = hits.get("hits", []) if isinstance(hits, Mapping) else None
    if not isinstance(inner, list) or not all(isinstance(h, Mapping) for h in inner):
        raise BadEngineResponse("the engine's answer has no list of hit objects under hits.hits")
    return dict(value)


class RerankFailed(Exception):
    """Reranking could not be done and the options were strict.

    Attributes:
        reason: the skip reason (``"unavailable"``, ``"deadline_exceeded"``,
            ``"resource_exhausted"``, ``"no_query_text"``, ``"no_document_text"``, or another
            gRPC code, lower case).
        detail: a human-readable explanation.
        http_status: the status the proxy answers with (503 unless the reason says otherwise).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"reranking failed ({reason}): {detail}")
        self.reason = reason
        self.detail = detail
        self.http_status = _HTTP_STATUS.get(reason, 503)


@dataclass(frozen=True)
class TextBudget:
    """How much of each document text one call can send: characters and UTF-8 bytes.

    ``chars`` is ``max_input_tokens`` x :data:`CHARS_PER_TOKEN`; ``utf8_bytes`` keeps each
    text within the server's per-document limit and the call within its message limit
    (a window of long texts could otherwise exceed it and fail as a whole). 0: no bound.
    """

    chars: int = 0
    utf8_bytes: int = 0

    @classmethod
    def of(cls, info: ModelInfo, query: str, documents: int) -> TextBudget:
        """The budget for ``documents`` texts sent with ``query`` (as ``fit_query`` made it)
        to the model of ``info``."""
        limits = info.limits
        share = limits.max_message_bytes - len(query.encode()) - _MESSAGE_SLACK
        share = share // max(documents, 1) - _PER_DOCUMENT_SLACK
        return cls(
            chars=info.max_input_tokens * CHARS_PER_TOKEN,
            utf8_bytes=max(1, min(limits.max_document_bytes, share)),
        )

    def fit(self, text: str) -> str:
        """``text`` cut to this budget, its lone surrogates replaced (see ``fit_text``)."""
        return fit_text(text, self.chars, self.utf8_bytes)


def fit_query(info: ModelInfo, query: str) -> str:
    """``query`` cut as document texts are, to what the model of ``info`` reads and the
    server's query limit: longer, it would be refused, and the search left unreranked."""
    return fit_text(query, info.max_input_tokens * CHARS_PER_TOKEN, info.limits.max_query_bytes)


@dataclass(frozen=True)
class RerankCall:
    """One call the reranker must answer: the query and the window texts, by hit position."""

    query: str
    documents: tuple[Candidate, ...]

    def texts(self, budget: TextBudget = TextBudget()) -> list[str]:
        """The documents' texts in first-stage order (result indexes refer to this order),
        each fitted to ``budget``."""
        return [budget.fit(c.text or "") for c in self.documents]


@dataclass
class SearchJob:
    """One reranked search, from the caller's body to the rewritten response.

    Use: ``engine_body()`` -> the engine; ``call(response)`` -> the reranker (None: no call
    needed); ``finish(response, call, reranked or error)`` -> the caller.
    """

    spec: RerankSpec
    body: dict[str, Any]
    page: Page
    plan: FetchPlan
    query: str | None
    stats: RerankStats = field(default=STATS, repr=False)

    @classmethod
    def prepare(
        cls, body: Mapping[str, Any], spec: RerankSpec, stats: RerankStats = STATS
    ) -> SearchJob:
        """Plan the search of ``body`` (its ``ext.rerank`` block already read into ``spec``).

        Raises ValueError for a body the bridge cannot page (non-integer from/size).
        """
        clean = strip_rerank_ext(body)
        page = Page.of(clean)
        return cls(
            spec, clean, page, plan_fetch(page, spec.options), spec.query.resolve(clean), stats
        )

    @property
    def options(self) -> RerankOptions:
        return self.spec.options

    def engine_body(self) -> dict[str, Any]:
        """The body to send the engine: the caller's, with from/size widened to the window."""
        return {**self.body, "from": self.plan.from_, "size": self.plan.size}

    def call(self, response: Mapping[str, Any]) -> RerankCall | None:
        """What to ask the reranker about ``response``; None when no call is needed."""
        if not self.plan.rerank or self.query is None:
            return None
        found = candidates(response, self.options)
        if _no_text(found):
            return None
        docs = to_score(found, self.options)
        return RerankCall(clean_text(self.query), tuple(docs)) if docs else None

    def finish(
        self,
        response: Mapping[str, Any],
        call: RerankCall | None,
        outcome: Reranked | RerankdError | None,
        took_ms: float = 0.0,
    ) -> dict[str, Any]:
        """The response for the caller, counted in the stats.

        Raises RerankFailed in strict mode when reranking was wanted but could not be done.
        """
        if not self.plan.rerank:
            reason = "size_0" if self.page.size == 0 else "below_window"
            self.stats.count("not_needed", reason)
            block = rerank_block("not_needed", reason=reason, window=self.options.window)
            return first_stage(response, self.options, block)
        if self.query is None:
            return self._skip(response, "no_query_text", "no query text in the request or body")
        if isinstance(outcome, RerankdError):
            return self._skip(response, outcome.code.name.lower(), outcome.details)
        found = candidates(response, self.options)
        if _no_text(found):
            fields = ", ".join(self.options.fields)
            return self._skip(response, "no_document_text", f"no window hit has text in {fields}")
        scores: dict[int, float] = {}
        model = ""
        if call is not None and isinstance(outcome, Reranked):
            scores = {call.documents[r.index].position: r.score for r in outcome.results}
            model = outcome.model
        self.stats.count("reranked")
        block = rerank_block(
            "reranked",
            window=len(found),
            scored=len(scores),
            missing_text=sum(c.text is None for c in found),
            model=model,
            took_ms=round(took_ms, 3),
        )
        return apply_ranking(response, self.page, self.options, scores, block)

    def _skip(self, response: Mapping[str, Any], reason: str, detail: str) -> dict[str, Any]:
        self.stats.count("skipped", reason)
        if self.options.strict:
            raise RerankFailed(reason, detail)
        block = rerank_block("skipped", reason=reason, detail=detail)
        return apply_ranking(response, self.page, self.options, None, block)


def _no_text(found: list[Candidate]) -> bool:
    """Whether a window has hits and none with text: an order from scoring empty texts would be
    noise (the fields are misnamed, or ``_source`` filtering or ``filter_path`` hid them)."""
    return bool(found) and all(c.text is None for c in found)


def rerank_conflict(body: Mapping[str, Any], params: Mapping[str, Any]) -> str | None:
    """What in a search (its body and query-string ``params``) rules out reranking, or None:
    ``scroll``, ``search_after``, or a ``sort`` other than by descending score, whose pages
    follow the engine's order, which reranking would break (pages would skip and repeat
    hits; Elasticsearch refuses ``rescore`` with them alike); or a ``retriever`` or ``rank``,
    which ranks in the engine within its own ``rank_window_size`` (a window widened to the
    bridge's is refused there)."""
    if "scroll" in params:
        return "scroll"
    for name in ("search_after", "retriever", "rank"):
        if name in body:
            return name
    sort = body.get("sort", params.get("sort"))
    if sort is not None and not _by_score(sort):
        return "sort"
    return None


def _by_score(sort: Any) -> bool:
    """Whether a ``sort`` (body: a string, an object or a list of them; query string:
    ``field:order`` items) orders by descending ``_score`` alone."""
    if isinstance(sort, str):
        items: list[Any] = [part.strip() for part in sort.split(",") if part.strip()]
        return all(item in ("_score", "_score:desc") for item in items)
    items = sort if isinstance(sort, list) else [sort]
    for item in items:
        if item == "_score":
            continue
        if not isinstance(item, Mapping) or list(item) != ["_score"]:
            return False
        order = item["_score"]
        order = order.get("order", "desc") if isinstance(order, Mapping) else order
        if order != "desc":
            return False
    return True


def strip_rerank_ext(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` without ``ext.rerank`` (and without ``ext`` when that was all it held)."""
    clean = dict(body)
    ext = as_mapping(clean.get("ext"))
    if "rerank" in ext:
        rest = {k: v for k, v in ext.items() if k != "rerank"}
        if rest:
            clean["ext"] = rest
        else:
            del clean["ext"]
    return clean


def job_for(
    body: Mapping[str, Any],
    options: RerankOptions | None,
    query: str | None,
    query_path: str | None,
    stats: RerankStats,
) -> SearchJob:
    """The job of a library call: the arguments, overridden by the body's ``ext.rerank``."""
    base = RerankSpec(options or RerankOptions(), QuerySource(query, query_path))
    ext = as_mapping(body.get("ext")).get("rerank")
    spec = base if ext is None else parse_spec(ext, base)
    return SearchJob.prepare(body, spec, stats)


def rerank_sync(job: SearchJob, response: dict[str, Any], reranker: Client) -> dict[str, Any]:
    """Finish ``job`` on the engine's ``response``, calling the reranker when needed.

    The options' timeout bounds both calls of a client's first search (``GetModelInfo``,
    then ``Rerank``) together. A call refused as invalid under remembered limits is made
    once more, with the limits asked again (the server may have restarted with others).
    """
    call = job.call(response)
    if call is None:
        return job.finish(response, None, None)
    options = job.options
    started = time.perf_counter()

    def scored() -> Reranked:
        sends = _Sends.of(call, model_info(reranker, options.model, options.timeout))
        answers = []
        for texts in sends.requests:  # one after another, all within the options' timeout
            left = _time_left(options, started)
            answers.append(reranker.rerank(sends.query, texts, **_rerank_kwargs(options, left)))
        return sends.merged(answers)

    outcome: Reranked | RerankdError
    try:
        remembered = _remembered(reranker, options.model)
        try:
            outcome = scored()
        except InvalidArgument:
            if not remembered:
                raise
            _forget(reranker, options.model)
            outcome = scored()  # with the limits asked again
    except RerankdError as err:
        outcome = err
    return job.finish(response, call, outcome, (time.perf_counter() - started) * 1000)


async def rerank_async(
    job: SearchJob, response: dict[str, Any], reranker: AsyncClient
) -> dict[str, Any]:
    """The asyncio twin of :func:`rerank_sync`."""
    call = job.call(response)
    if call is None:
        return job.finish(response, None, None)
    options = job.options
    started = time.perf_counter()

    async def scored() -> Reranked:
        sends = _Sends.of(call, await async_model_info(reranker, options.model, options.timeout))
        kwargs = _rerank_kwargs(options, _time_left(options, started))
        answers = await asyncio.gather(
            *(reranker.rerank(sends.query, texts, **kwargs) for texts in sends.requests)
        )
        return sends.merged(list(answers))

    outcome: Reranked | RerankdError
    try:
        remembered = _remembered(reranker, options.model)
        try:
            outcome = await scored()
        except InvalidArgument:
            if not remembered:
                raise
            _forget(reranker, options.model)
            outcome = await scored()  # with the limits asked again
    except RerankdError as err:
        outcome = err
    return job.finish(response, call, outcome, (time.perf_counter() - started) * 1000)


@dataclass(frozen=True)
class _Sends:
    """The Rerank requests for one call: each distinct text once (identical texts, such as
    the empty text of every hit without one, then score exactly alike and keep first-stage
    order among themselves), at most the server's ``max_documents`` a request (a window may
    be larger: a cross-encoder scores each pair alone, so split requests score the same)."""

    query: str  # fitted to the server's limits
    slots: list[int]  # for each document of the call, its text's place among the distinct
    requests: list[list[str]]

    @classmethod
    def of(cls, call: RerankCall, info: ModelInfo) -> _Sends:
        step = max(info.limits.max_documents, 1)
        query = fit_query(info, call.query)
        budget = TextBudget.of(info, query, min(len(call.documents), step))
        places: dict[str, int] = {}
        slots = [places.setdefault(text, len(places)) for text in call.texts(budget)]
        distinct = list(places)
        requests = [distinct[i : i + step] for i in range(0, len(distinct), step)]
        return cls(query, slots, requests)

    def merged(self, answers: list[Reranked]) -> Reranked:
        """The answers as one, a result per document of the call (its index in the call)."""
        scores: list[float] = []
        for answer in answers:
            part = [0.0] * len(answer.results)
            for result in answer.results:
                part[result.index] = result.score
            scores += part
        results = [RerankResult(i, "", scores[slot], "") for i, slot in enumerate(self.slots)]
        usages = [answer.usage for answer in answers]
        usage = Usage(
            input_tokens=sum(u.input_tokens for u in usages),
            truncated_pairs=sum(u.truncated_pairs for u in usages),
            queue_time_us=max(u.queue_time_us for u in usages),
            inference_time_us=max(u.inference_time_us for u in usages),
            batches=sum(u.batches for u in usages),
            cached_pairs=sum(u.cached_pairs for u in usages),
            scored_pairs=sum(u.scored_pairs for u in usages),
        )
        return Reranked(results, answers[0].model, usage)


# GetModelInfo answers per client and model name, asked once: a client outlives many
# searches. A server restarted with other limits (or another replica behind the target)
# refuses a request made to the old ones as invalid: a call that used remembered limits is
# then made once more, with the limits asked again.
_MODEL_INFO: weakref.WeakKeyDictionary[Client | AsyncClient, dict[str, ModelInfo]] = (
    weakref.WeakKeyDictionary()
)


def _remembered(client: Client | AsyncClient, model: str) -> bool:
    return model in _MODEL_INFO.get(client, {})


def _forget(client: Client | AsyncClient, model: str) -> None:
    _MODEL_INFO.get(client, {}).pop(model, None)


def model_info(client: Client, model: str, timeout: float) -> ModelInfo:
    """``client.model_info(model)``, asked once per client and model (then remembered).

    Raises the client's RerankdError when the server cannot answer.
    """
    known = _MODEL_INFO.setdefault(client, {})
    if model not in known:
        known[model] = client.model_info(model, timeout=timeout)
    return known[model]


async def async_model_info(client: AsyncClient, model: str, timeout: float) -> ModelInfo:
    """The asyncio twin of :func:`model_info`."""
    known = _MODEL_INFO.setdefault(client, {})
    if model not in known:
        known[model] = await client.model_info(model, timeout=timeout)
    return known[model]


def _time_left(options: RerankOptions, started: float) -> float:
    """What is left of the options' timeout since ``started`` (a floor keeps it a deadline)."""
    return max(options.timeout - (time.perf_counter() - started), 0.001)


def rerank_search(
    client: OpenSearch | Elasticsearch,
    reranker: Client,
    *,
    body: Mapping[str, Any],
    index: str | None = None,
    query: str | None = None,
    query_path: str | None = None,
    options: RerankOptions | None = None,
    stats: RerankStats = STATS,
    **search_kwargs: Any,
) -> dict[str, Any]:
    """Search with an opensearch-py or elasticsearch client and rerank the result.

    Args:
        client: ``opensearchpy.OpenSearch`` or ``elasticsearch.Elasticsearch``.
        reranker: a :class:`rerankd.Client`.
        body: the search body as for ``client.search`` (``from``/``size`` give the page; an
            ``ext.rerank`` block, see :mod:`rerankd_bridge.spec`, overrides the arguments).
        index: the index expression to search.
        query: the query text; or ``query_path``, a dotted path into ``body``; with neither,
            the text of a simple ``match``/``multi_match``/``query_string`` query.
        options: window, fields and policies (default :class:`RerankOptions`).
        stats: the counters to update.
        search_kwargs: passed on to ``client.search`` (not ``from_``/``size``: use the body),
            but ``filter_path``, which is applied to the reranked answer.

    Returns:
        The engine's response as a dict with the page reranked and a ``"rerank"`` block.

    Raises:
        RerankFailed: strict options and the reranking could not be done.
        ValueError: bad ``ext.rerank`` or from/size; ``scroll``, ``search_after`` or a sort
            other than by score (see :func:`rerank_conflict`).
        BadEngineResponse: the engine's answer is not a search response.
        Whatever ``client.search`` raises for engine errors, unchanged.
    """
    job = job_for(body, options, query, query_path, stats)
    kwargs, paths = _checked(body, search_kwargs)
    raw = client.search(index=index, body=job.engine_body(), **kwargs)
    return apply_filter_path(rerank_sync(job, _as_dict(raw), reranker), paths)


async def async_rerank_search(
    client: AsyncOpenSearch | AsyncElasticsearch,
    reranker: AsyncClient,
    *,
    body: Mapping[str, Any],
    index: str | None = None,
    query: str | None = None,
    query_path: str | None = None,
    options: RerankOptions | None = None,
    stats: RerankStats = STATS,
    **search_kwargs: Any,
) -> dict[str, Any]:
    """The asyncio twin of :func:`rerank_search` (``AsyncOpenSearch``/``AsyncElasticsearch``
    and :class:`rerankd.AsyncClient`); same arguments, result and errors."""
    job = job_for(body, options, query, query_path, stats)
    kwargs, paths = _checked(body, search_kwargs)
    raw = await client.search(index=index, body=job.engine_body(), **kwargs)
    return apply_filter_path(await rerank_async(job, _as_dict(raw), reranker), paths)


def _rerank_kwargs(options: RerankOptions, timeout: float) -> dict[str, Any]:
    return {"raw_scores": options.raw_scores, "model": options.model, "timeout": timeout}


def _checked(body: Mapping[str, Any], search_kwargs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The arguments for ``client.search`` and the ``filter_path`` taken out of them.

    Raises ValueError for from/size among them, or what rules out reranking."""
    clash = {"from_", "size", "body", "from"} & set(search_kwargs)
    if clash:
        raise ValueError(f"put from/size in the body, not as arguments: {sorted(clash)}")
    conflict = rerank_conflict({**body, **search_kwargs}, search_kwargs)
    if conflict is not None:
        raise ValueError(f"reranking cannot be combined with {conflict}")
    kwargs = dict(search_kwargs)
    paths = kwargs.pop("filter_path", None) or ""
    return kwargs, paths if isinstance(paths, str) else ",".join(paths)


def _as_dict(response: Any) -> dict[str, Any]:
    """The JSON body of a client's answer (elasticsearch wraps it in ObjectApiResponse),
    checked by :func:`search_response`."""
    return search_response(getattr(response, "body", response))
