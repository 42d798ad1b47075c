"""``rerankd eval``: does reranking help on *your* data? Measure it before deploying.

Takes a BEIR-format dataset (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) and a
first-stage ranking, either a TREC run file or live ``_search`` calls to an OpenSearch or
Elasticsearch index, reranks the top ``--depth`` candidates of every judged query through a
rerankd server, and reports NDCG@10, MRR@10, Recall@10 and Recall@depth before and after, with
the queries that gained and lost most.

The metric functions are pure (a ranking and a query's judgements in, a number out) so they can
be checked against hand-computed values; reading files, calling the engine and the reranker
stay at the edges. Definitions (those of trec_eval / BEIR):

- NDCG@k: linear gain (the grade; grades <= 0 count 0), discount ``log2(rank + 1)``; the ideal
  DCG comes from all judged documents of the query, retrieved or not.
- MRR@k: 1 / rank of the first document with grade > 0 within the top k, else 0.
- Recall@k: judged documents with grade > 0 found in the top k / all of them.

Queries without judgements in the split, or whose judgements are all <= 0 (their metrics are
undefined), are skipped and counted. Judged queries the first stage found nothing for stay in
the averages with 0, as they would in production.

Exit status: 0 on success, 1 when the reranker or the engine fails, 2 for bad usage or input.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

from rerankd._types import Document
from rerankd.client import Client
from rerankd.connection import Connection, OptionError
from rerankd.connection import add_arguments as add_connection_arguments
from rerankd.errors import RerankdError

CUTOFF = 10
"""The cut-off of NDCG, MRR and the first recall: what a results page shows."""

Judgements = Mapping[str, int]
"""One query's judgements: document id -> grade (> 0 relevant)."""

Scored = list[tuple[str, float]]
"""A first-stage result list: (document id, score) pairs."""

_T = TypeVar("_T")
_R = TypeVar("_R")


class InputError(Exception):
    """Input the command cannot use: a missing file, a malformed line (exit 2)."""


class EngineError(Exception):
    """The search engine failed or answered something unusable (exit 1)."""


# --- metrics: pure functions ---------------------------------------------------------------


def dcg(gains: Iterable[float]) -> float:
    """Discounted cumulative gain of gains in rank order: sum of gain / log2(rank + 1)."""
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def ndcg_at(ranking: Sequence[str], judgements: Judgements, k: int = CUTOFF) -> float:
    """NDCG@k with graded gains; unjudged documents gain 0, a duplicate id only counts once.

    The ideal ranking is built from every judged document, so relevant documents the first
    stage missed lower the score: a reranker cannot be credited for what it was never given.
    Returns 0.0 when no document of the query has a grade > 0.
    """
    ideal = dcg(sorted((g for g in judgements.values() if g > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg(max(judgements.get(doc, 0), 0) for doc in _unique(ranking)[:k]) / ideal


def mrr_at(ranking: Sequence[str], judgements: Judgements, k: int = CUTOFF) -> float:
    """Reciprocal rank of the first document with grade > 0 in the top k, 0.0 when none."""
    for rank, doc in enumerate(_unique(ranking)[:k], start=1):
        if judgements.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def recall_at(ranking: Sequence[str], judgements: Judgements, k: int) -> float:
    """Share of the documents with grade > 0 that appear in the top k; 0.0 when none exist."""
    relevant = {doc for doc, grade in judgements.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(_unique(ranking)[:k])) / len(relevant)


def metric_names(depth: int) -> list[str]:
    """The reported metrics, in display order (Recall@depth last, unless depth is the cutoff)."""
    names = [f"ndcg@{CUTOFF}", f"mrr@{CUTOFF}", f"recall@{CUTOFF}", f"recall@{depth}"]
    return list(dict.fromkeys(names))


def query_metrics(ranking: Sequence[str], judgements: Judgements, depth: int) -> dict[str, float]:
    """Every reported metric for one query's ranking, keyed as :func:`metric_names`."""
    return {
        f"ndcg@{CUTOFF}": ndcg_at(ranking, judgements, CUTOFF),
        f"mrr@{CUTOFF}": mrr_at(ranking, judgements, CUTOFF),
        f"recall@{CUTOFF}": recall_at(ranking, judgements, CUTOFF),
        f"recall@{depth}": recall_at(ranking, judgements, depth),
    }


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for no values (an empty evaluation, not an error)."""
    return sum(values) / len(values) if values else 0.0


def order_by_score(scored: Sequence[tuple[str, float]]) -> list[str]:
    """Document ids best first; equal scores keep their input order, repeated ids their first.

    Stable ties make the evaluation reproducible, as the server's ties by request index do.
    """
    order = sorted(range(len(scored)), key=lambda i: -scored[i][1])
    return _unique([scored[i][0] for i in order])


def rerank_window(
    first_stage: Sequence[str], depth: int, sent: Sequence[str], order: Sequence[int]
) -> list[str]:
    """The ranking after reranking: reranked window, then unscored window docs, then the tail.

    Args:
        first_stage: the first-stage ranking, best first.
        depth: how many of its documents were candidates for reranking.
        sent: the candidates actually sent (window documents that have a text), in order.
        order: the reranker's answer, indexes into ``sent``, best first.

    Window documents that could not be sent (missing from the corpus) follow the reranked ones
    in first-stage order, and documents beyond ``depth`` keep their first-stage places.
    """
    window = list(first_stage[:depth])
    reranked = [sent[i] for i in order]
    placed = set(reranked)
    return reranked + [doc for doc in window if doc not in placed] + list(first_stage[depth:])


def _unique(ranking: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ranking))


# --- the dataset ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A BEIR dataset, read once: texts by id and one split's judgements."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


@dataclass(frozen=True)
class EvalQuery:
    """A query that will be evaluated: its text and judgements."""

    qid: str
    text: str
    judgements: dict[str, int]


def select_queries(
    dataset: Dataset, max_queries: int = 0
) -> tuple[list[EvalQuery], dict[str, int]]:
    """The queries to evaluate (``queries.jsonl`` order) and counts of those skipped, by reason.

    Metrics are undefined without a relevant document, so such queries are counted, not
    averaged in as zeros. ``max_queries`` > 0 keeps that many, evenly spaced through the list:
    datasets are often sorted by id, and the first queries alone can mislead.
    """
    selected: list[EvalQuery] = []
    skipped = {"no_judgements": 0, "no_relevant_judgement": 0, "judged_without_query_text": 0}
    for qid, text in dataset.queries.items():
        judgements = dataset.qrels.get(qid)
        if judgements is None:
            skipped["no_judgements"] += 1
        elif not any(grade > 0 for grade in judgements.values()):
            skipped["no_relevant_judgement"] += 1
        else:
            selected.append(EvalQuery(qid, text, dict(judgements)))
    skipped["judged_without_query_text"] = sum(1 for q in dataset.qrels if q not in dataset.queries)
    if max_queries > 0:
        skipped["over_max_queries"] = max(len(selected) - max_queries, 0)
        if max_queries < len(selected):
            selected = [selected[i * len(selected) // max_queries] for i in range(max_queries)]
    return selected, skipped


def load_dataset(folder: Path, split: str) -> Dataset:
    """Read a BEIR folder; raises InputError naming the file and line of any problem."""
    corpus = {
        _field(row, "_id", path, n): _document_text(row, path, n)
        for path, n, row in _json_lines(folder / "corpus.jsonl")
    }
    queries = {
        _field(row, "_id", path, n): _field(row, "text", path, n)
        for path, n, row in _json_lines(folder / "queries.jsonl")
    }
    return Dataset(corpus, queries, read_qrels(folder / "qrels" / f"{split}.tsv"))


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``query-id<TAB>corpus-id<TAB>score`` lines (header optional) -> qid -> doc -> grade."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        parts = line.rstrip("\n").split("\t")
        if not line.strip() or (number == 1 and parts[:1] == ["query-id"]):
            continue
        if len(parts) != 3:
            parts = line.split()  # tolerate spaces, as some converters write them
        try:
            qid, doc, grade = parts
            qrels.setdefault(qid, {})[doc] = int(grade)
        except ValueError:
            raise InputError(
                f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>integer score'"
            ) from None
    return qrels


def read_trec_run(path: Path) -> dict[str, Scored]:
    """A TREC run (``qid Q0 docid rank score tag``) -> qid -> documents best first, with scores.

    Ordered by score, then by the rank column (trec_eval ignores the rank column; using it
    for ties keeps the order its producer meant).
    """
    rows: dict[str, list[tuple[float, int, str]]] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            qid, _, doc, rank, score = parts[:5]
            if len(parts) != 6:
                raise ValueError
            rows.setdefault(qid, []).append((-float(score), int(rank), doc))
        except ValueError:
            raise InputError(
                f"{path}:{number}: expected 'qid Q0 docid rank score tag' (6 fields)"
            ) from None
    run: dict[str, Scored] = {}
    for qid, entries in rows.items():
        entries.sort(key=lambda entry: entry[:2])  # stable: file order breaks remaining ties
        seen: set[str] = set()
        run[qid] = []
        for neg_score, _, doc in entries:
            if doc not in seen:
                seen.add(doc)
                run[qid].append((doc, -neg_score))
    return run


def format_trec_run(rankings: Iterable[tuple[str, Scored]], tag: str) -> Iterator[str]:
    """TREC run lines (``qid Q0 docid rank score tag``) for rankings given best first."""
    for qid, scored in rankings:
        for rank, (doc, score) in enumerate(scored, start=1):
            yield f"{qid} Q0 {doc} {rank} {score:.6g} {tag}\n"


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None


def _json_lines(path: Path) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected a JSON object")
        yield path, number, row


def _field(row: Mapping[str, Any], name: str, path: Path, number: int) -> str:
    value = row.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool) and name == "_id":
        value = str(value)  # some datasets write numeric ids
    if not isinstance(value, str):
        raise InputError(f'{path}:{number}: "{name}" must be a string')
    return value


def _document_text(row: Mapping[str, Any], path: Path, number: int) -> str:
    """Title and text joined by a space, as BEIR's cross-encoder reranking does."""
    title = row.get("title") or ""
    text = _field(row, "text", path, number)
    if not isinstance(title, str):
        raise InputError(f'{path}:{number}: "title" must be a string')
    return f"{title} {text}" if title.strip() else text


# --- the first stage: a search engine ------------------------------------------------------


def engine_search(
    url: str, index: str, field_name: str, query: str, size: int, timeout: float
) -> Scored:
    """One ``match`` query on ``field_name`` of ``index`` -> (``_id``, ``_score``) best first.

    Works with OpenSearch and Elasticsearch (the ``_search`` API is the same for this query).
    User and password in the URL are sent as basic authentication. The document ids must be
    the corpus ids: the texts sent to the reranker come from the corpus, as in run-file mode.
    """
    parts = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        secret = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    base = urllib.parse.urlunsplit(parts).rstrip("/")
    body = {"size": size, "query": {"match": {field_name: query}}, "_source": False}
    request = urllib.request.Request(
        f"{base}/{urllib.parse.quote(index, safe='')}/_search",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as err:
        detail = err.read(500).decode("utf-8", "replace")
        raise EngineError(f"engine answered HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise EngineError(f"engine {base} unreachable: {err}") from None
    except json.JSONDecodeError:
        raise EngineError("engine answered something that is not JSON") from None
    try:
        return [(str(hit["_id"]), float(hit["_score"] or 0.0)) for hit in answer["hits"]["hits"]]
    except (KeyError, TypeError, ValueError):
        raise EngineError("engine answer has no hits.hits[]._id/_score") from None


# --- the evaluation ------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryResult:
    """One evaluated query: its metrics before and after reranking."""

    qid: str
    query: str
    candidates: int
    before: dict[str, float]
    after: dict[str, float]

    @property
    def delta(self) -> float:
        """Change of NDCG@10, the number the per-query lists are sorted by."""
        key = f"ndcg@{CUTOFF}"
        return self.after[key] - self.before[key]


@dataclass
class Report:
    """Everything one evaluation measured; ``to_json`` is the ``--json`` output."""

    dataset: str
    split: str
    first_stage: str
    depth: int
    target: str
    model: str
    metrics: list[str]
    queries: list[QueryResult] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    no_candidates: int = 0
    run_queries_ignored: int = 0
    not_in_corpus: int = 0
    clipped_documents: int = 0
    pairs: int = 0
    seconds: float = 0.0

    def mean(self, metric: str, side: str) -> float:
        """Mean of ``metric`` over the evaluated queries, ``side`` "before" or "after"."""
        return mean([getattr(q, side)[metric] for q in self.queries])

    def deltas(self, top: int) -> tuple[list[QueryResult], list[QueryResult]]:
        """The ``top`` largest NDCG@10 gains and losses (ties by query id)."""
        gains = sorted((q for q in self.queries if q.delta > 0), key=lambda q: (-q.delta, q.qid))
        losses = sorted((q for q in self.queries if q.delta < 0), key=lambda q: (q.delta, q.qid))
        return gains[:top], losses[:top]

    def changed(self) -> dict[str, int]:
        """How many queries got better, worse or stayed the same on NDCG@10."""
        return {
            "improved": sum(1 for q in self.queries if q.delta > 0),
            "regressed": sum(1 for q in self.queries if q.delta < 0),
            "unchanged": sum(1 for q in self.queries if q.delta == 0),
        }

    def to_json(self, top: int) -> dict[str, Any]:
        """A JSON-ready summary: means, counts, the largest changes and every query's metrics."""
        gains, losses = self.deltas(top)
        return {
            "dataset": self.dataset,
            "split": self.split,
            "first_stage": self.first_stage,
            "depth": self.depth,
            "target": self.target,
            "model": self.model,
            "queries": {
                "evaluated": len(self.queries),
                "no_candidates": self.no_candidates,
                "skipped": self.skipped,
                "run_queries_ignored": self.run_queries_ignored,
            },
            "documents": {
                "reranked": self.pairs,
                "not_in_corpus": self.not_in_corpus,
                "clipped": self.clipped_documents,
            },
            "seconds": round(self.seconds, 3),
            "metrics": {
                name: {
                    "before": self.mean(name, "before"),
                    "after": self.mean(name, "after"),
                    "delta": self.mean(name, "after") - self.mean(name, "before"),
                }
                for name in self.metrics
            },
            "per_query_ndcg@10": self.changed(),
            "top_improvements": [_query_json(q) for q in gains],
            "top_regressions": [_query_json(q) for q in losses],
            "per_query": [_query_json(q) for q in self.queries],
        }


def _query_json(result: QueryResult) -> dict[str, Any]:
    return {
        "qid": result.qid,
        "query": result.query,
        "candidates": result.candidates,
        "before": result.before,
        "after": result.after,
        "delta_ndcg@10": result.delta,
    }


FirstStage = Callable[[EvalQuery], Scored]


def evaluate(
    client: Client,
    dataset: Dataset,
    queries: Sequence[EvalQuery],
    first_stage: FirstStage,
    report: Report,
    *,
    concurrency: int = 4,
    timeout: float | None = None,
    model: str = "",
    max_document_bytes: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[str, Scored]]:
    """Fetch candidates, rerank them and fill ``report``; returns the reranked run.

    Calls run ``concurrency`` at a time so the server can batch across them. A failed call
    fails the evaluation (RerankdError, EngineError): scores from a partial run would mislead.
    """
    candidates = _parallel(first_stage, queries, concurrency, None)
    depth = report.depth

    def rerank(item: tuple[EvalQuery, Scored]) -> tuple[list[str], Scored, int, int]:
        query, scored = item
        first = order_by_score(scored)
        window = first[:depth]
        sent = [doc for doc in window if doc in dataset.corpus]
        if not sent:
            return first, [], len(window), 0
        full = [dataset.corpus[doc] for doc in sent]
        texts = [_clip(text, max_document_bytes) for text in full]
        clipped = sum(len(a) != len(b) for a, b in zip(full, texts, strict=True))
        answer = client.rerank(
            query.text,
            [Document(text, doc) for doc, text in zip(sent, texts, strict=True)],
            timeout=timeout,
            model=model,
        )
        if not report.model:
            report.model = answer.model
        order = [hit.index for hit in answer.results]
        ranking = rerank_window(first, depth, sent, order)
        run = [(sent[hit.index], hit.score) for hit in answer.results]
        return ranking, run, len(window) - len(sent), clipped

    started = time.perf_counter()
    reranked = _parallel(rerank, list(zip(queries, candidates, strict=True)), concurrency, progress)
    report.seconds = time.perf_counter() - started
    run: list[tuple[str, Scored]] = []
    for query, scored, (ranking, scored_after, missing, clipped) in zip(
        queries, candidates, reranked, strict=True
    ):
        first = order_by_score(scored)
        report.queries.append(
            QueryResult(
                query.qid,
                query.text,
                min(len(first), depth),
                query_metrics(first, query.judgements, depth),
                query_metrics(ranking, query.judgements, depth),
            )
        )
        report.no_candidates += int(not first)
        report.not_in_corpus += missing
        report.clipped_documents += clipped
        report.pairs += len(scored_after)
        if scored_after:
            run.append((query.qid, scored_after))
    return run


def _clip(text: str, max_bytes: int) -> str:
    """``text`` cut to ``max_bytes`` UTF-8 bytes (the server refuses longer documents).

    The model truncates far earlier anyway, so the cut costs nothing in score.
    """
    if max_bytes <= 0 or len(text) * 4 <= max_bytes:
        return text
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


def _parallel(
    work: Callable[[_T], _R],
    items: Sequence[_T],
    concurrency: int,
    progress: Callable[[int, int], None] | None,
) -> list[_R]:
    """``[work(item) for item in items]`` with ``concurrency`` threads; the first error wins.

    On an error the calls not yet started are cancelled and the error is raised.
    """
    if progress is not None and items:
        progress(0, len(items))
    with ThreadPoolExecutor(max_workers=max(concurrency, 1)) as pool:
        futures = [pool.submit(work, item) for item in items]
        pending: set[Future[_R]] = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
            error = next((e for e in (f.exception() for f in done) if e is not None), None)
            if error is not None:
                for future in pending:
                    future.cancel()
                raise error
            if progress is not None:
                progress(len(futures) - len(pending), len(futures))
        return [future.result() for future in futures]


# --- output --------------------------------------------------------------------------------


def _label(metric: str) -> str:
    name, _, k = metric.partition("@")
    return {"ndcg": "NDCG", "mrr": "MRR", "recall": "Recall"}[name] + "@" + k


def format_report(report: Report, top: int) -> str:
    """The human-readable report: the means table, the counts, the largest per-query changes."""
    lines = [
        f"rerankd eval: {report.dataset} (split {report.split})",
        f"first stage: {report.first_stage}, top {report.depth} reranked by {report.model} "
        f"at {report.target}",
    ]
    skipped = ", ".join(f"{count} {why.replace('_', ' ')}" for why, count in report.skipped.items())
    lines.append(f"queries: {len(report.queries)} evaluated; skipped: {skipped}")
    if report.no_candidates:
        lines.append(f"  {report.no_candidates} evaluated queries got no candidates (scored 0)")
    if report.run_queries_ignored:
        lines.append(f"  {report.run_queries_ignored} queries of the run were not evaluated")
    rate = report.pairs / report.seconds if report.seconds > 0 else 0.0
    lines.append(
        f"documents: {report.pairs} reranked in {report.seconds:.1f} s ({rate:.0f}/s); "
        f"{report.not_in_corpus} not in the corpus, {report.clipped_documents} clipped"
    )
    lines += ["", f"{'metric':<12}{'first stage':>12}{'reranked':>12}{'delta':>10}"]
    for name in report.metrics:
        before, after = report.mean(name, "before"), report.mean(name, "after")
        lines.append(f"{_label(name):<12}{before:>12.4f}{after:>12.4f}{after - before:>+10.4f}")
    if f"recall@{report.depth}" in report.metrics and report.depth > CUTOFF:
        lines.append(
            f"(Recall@{report.depth} cannot change: reranking reorders candidates, adds none)"
        )
    changed = report.changed()
    lines += [
        "",
        f"NDCG@10 per query: {changed['improved']} improved, {changed['regressed']} regressed, "
        f"{changed['unchanged']} unchanged",
    ]
    gains, losses = report.deltas(top)
    for title, chosen in (("largest improvements", gains), ("largest regressions", losses)):
        if chosen:
            lines.append(f"{title}:")
            lines += [
                f"  {q.delta:+.4f}  {q.before['ndcg@10']:.4f} -> {q.after['ndcg@10']:.4f}  "
                f"{q.qid}  {_shorten(q.query, 60)!r}"
                for q in chosen
            ]
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# --- the command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``rerankd eval`` parser."""
    parser = argparse.ArgumentParser(
        prog="rerankd eval",
        description="Measure what reranking does on a BEIR-format dataset: NDCG@10, MRR@10, "
        "Recall@10 and Recall@depth of a first-stage ranking before and after reranking.",
    )
    parser.add_argument(
        "dataset", type=Path, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv"
    )
    parser.add_argument("--split", default="test", help="qrels file to use (default %(default)s)")
    first = parser.add_mutually_exclusive_group(required=True)
    first.add_argument(
        "--run", type=Path, metavar="FILE", help="first-stage TREC run: qid Q0 docid rank score tag"
    )
    first.add_argument(
        "--engine",
        metavar="URL",
        help="OpenSearch/Elasticsearch base URL to search (user:password@ for basic auth)",
    )
    parser.add_argument("--index", help="index to search (with --engine)")
    parser.add_argument(
        "--field", default="text", help="field of the match query (default %(default)s)"
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=100,
        help="candidates reranked per query; deeper finds more but costs linearly "
        "(default %(default)s)",
    )
    add_connection_arguments(parser, target_help="rerankd server")
    parser.add_argument("--model", default="", help="served model (default: the server's)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="calls in flight; a few let the server batch across queries, more only queue "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="deadline of each rerank or search call (default %(default)s)",
    )
    parser.add_argument(
        "--max-queries",
        type=int,
        default=0,
        help="evaluate N queries evenly spaced through the set, for a quick look (0: all)",
    )
    parser.add_argument(
        "--top", type=int, default=5, help="largest per-query changes to list (default %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress lines on stderr (done/total, rate and time left, redrawn in place on "
        "a terminal, every 10 s otherwise)",
    )
    parser.add_argument(
        "--output-run", type=Path, metavar="FILE", help="write the reranked run in TREC format"
    )
    parser.add_argument(
        "--run-tag", default="rerankd", help="tag column of --output-run (default %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``rerankd eval`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.engine and not args.index:
        parser.error("--engine needs --index")
    for name in ("depth", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    try:
        report, run = _run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RerankdError as err:
        print(f"error: reranker: {err}", file=sys.stderr)
        return 1
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.output_run is not None:
        try:
            with args.output_run.open("w", encoding="utf-8") as out:
                out.writelines(format_trec_run(run, args.run_tag))
        except OSError as err:
            print(f"error: cannot write {args.output_run}: {err.strerror}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(report.to_json(args.top), indent=2, ensure_ascii=False))
    else:
        print(format_report(report, args.top))
    return 0


def _run(args: argparse.Namespace) -> tuple[Report, list[tuple[str, Scored]]]:
    dataset = load_dataset(args.dataset, args.split)
    queries, skipped = select_queries(dataset, args.max_queries)
    report = Report(
        dataset=str(args.dataset),
        split=args.split,
        first_stage=str(args.run) if args.run else f"{args.engine} index {args.index}",
        depth=args.depth,
        target=args.target,
        model="",
        metrics=metric_names(args.depth),
        skipped=skipped,
    )
    first_stage: FirstStage
    if args.run is not None:
        run = read_trec_run(args.run)
        evaluated = {q.qid for q in queries}
        report.run_queries_ignored = sum(1 for qid in run if qid not in evaluated)

        def first_stage(query: EvalQuery) -> Scored:
            return run.get(query.qid, [])
    else:

        def first_stage(query: EvalQuery) -> Scored:
            return engine_search(
                args.engine, args.index, args.field, query.text, args.depth, args.timeout
            )

    with _client(args) as client:
        info = client.model_info(args.model, timeout=args.timeout)
        if args.depth > info.limits.max_documents:
            raise InputError(
                f"--depth {args.depth} exceeds the server's limit of {info.limits.max_documents} "
                "documents per call: lower --depth or raise the server's --max-documents"
            )
        result = evaluate(
            client,
            dataset,
            queries,
            first_stage,
            report,
            concurrency=args.concurrency,
            timeout=args.timeout,
            model=args.model,
            max_document_bytes=info.limits.max_document_bytes,
            progress=None if args.quiet else Progress(sys.stderr),
        )
        report.model = report.model or info.name
    return report, result


def _client(args: argparse.Namespace) -> Client:
    """The rerankd client from the connection options; unusable options are input errors."""
    try:
        return Connection.from_args(args).client(timeout=args.timeout)
    except OptionError as err:
        raise InputError(str(err)) from None


class Progress:
    """Reranking progress on ``stream``, so that a long evaluation does not look hung.

    Called as ``progress(done, total)``: on a terminal one line redrawn in place at every call,
    elsewhere (a log, a pipe) a line at the first call, then every ``interval`` seconds, and a
    last one when done. Each says done/total, queries per second and, until done, the time left.
    ``clock`` is injectable so tests need no waiting.
    """

    def __init__(
        self,
        stream: TextIO,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._interval = interval
        self._clock = clock
        self._started: float | None = None
        self._shown = -math.inf

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if self._started is None:
            self._started = now
        final = done >= total
        if not (final or self._tty or now - self._shown >= self._interval):
            return
        self._shown = now
        line = f"reranked {done}/{total} queries"
        elapsed = now - self._started
        if done and elapsed > 0:
            rate = done / elapsed
            line += f", {rate:.1f} queries/s"
            if not final:
                line += f", about {_duration((total - done) / rate)} left"
        if self._tty:  # back to the line's start, and clear what a longer line left there
            print(f"\r{line}\033[K", end="\n" if final else "", file=self._stream, flush=True)
        else:
            print(line, file=self._stream, flush=True)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


if __name__ == "__main__":
    sys.exit(main())
