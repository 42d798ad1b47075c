"""Fixed-seed workloads: lists of (query, documents) requests with controlled token lengths.

Texts are drawn from the tiny model's English corpus, so with the word-level benchmark tokenizer
a word is about one token and a target length in tokens is a target length in words; the real
man-page workload uses the shared man-page corpus and its BM25 top-30 lists instead.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bench.models import SHARED

#: The man-page corpus, queries and BM25 top-30 lists in the shared folder, when present.
SHARED_DATA = SHARED / "data" / "manpages"


@dataclass(frozen=True)
class Request:
    """One rerank call: a query and its candidate documents."""

    query: str
    documents: list[str]


@dataclass(frozen=True)
class Workload:
    """A named, seeded list of requests; every system in a run gets exactly these pairs."""

    name: str
    requests: list[Request]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """All (query, document) pairs, request by request."""
        return [(r.query, d) for r in self.requests for d in r.documents]

    @property
    def pair_count(self) -> int:
        return sum(len(r.documents) for r in self.requests)


def _words() -> list[str]:
    from rerankd_server.tiny_models import CORPUS

    return re.findall(r"[a-z]+", CORPUS.lower())


def _text(rng: random.Random, words: Sequence[str], count: int) -> str:
    return " ".join(rng.choice(words) for _ in range(max(1, count)))


def _lognormal_int(rng: random.Random, low: int, high: int, median: float, sigma: float) -> int:
    return int(min(high, max(low, rng.lognormvariate(_ln(median), sigma))))


def _ln(x: float) -> float:
    import math

    return math.log(x)


#: name -> (pair tokens low, high, median, sigma, docs per request low, high)
SHAPES: dict[str, tuple[int, int, float, float, int, int]] = {
    "short": (30, 200, 80.0, 0.5, 20, 100),  # natural-questions-like pairs
    "passages": (60, 400, 130.0, 0.5, 20, 100),  # MS MARCO-like passages
    "long": (50, 4000, 300.0, 1.1, 10, 40),  # mixed long documents (capped by max length)
    "search": (30, 400, 90.0, 0.6, 20, 200),  # many concurrent queries, 20-200 docs each
}


def synthetic(name: str, requests: int, seed: int = 0) -> Workload:
    """``requests`` requests of shape ``name`` (see SHAPES); the same seed gives the same pairs."""
    low, high, median, sigma, docs_low, docs_high = SHAPES[name]
    rng = random.Random(f"{name}:{seed}")
    words = _words()
    out = []
    for _ in range(requests):
        query_len = rng.randint(4, 14)
        query = _text(rng, words, query_len)
        docs = [
            _text(rng, words, _lognormal_int(rng, low, high, median, sigma) - query_len - 3)
            for _ in range(rng.randint(docs_low, docs_high))
        ]
        out.append(Request(query, docs))
    return Workload(name, out)


def manpages(requests: int, seed: int = 0) -> Workload:
    """Held-out man-page queries with their BM25 top-30 (real text, real lengths).

    Raises:
        FileNotFoundError: the shared data is absent (the scenario is then skipped).
    """
    if not (SHARED_DATA / "bm25_test_top30.json").exists():
        raise FileNotFoundError(f"{SHARED_DATA} is absent; the manpages workload is skipped")
    texts = {}
    with (SHARED_DATA / "corpus.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            texts[row["id"]] = row["text"]
    queries = {}
    with (SHARED_DATA / "queries.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            queries[row["qid"]] = row["query"]
    top = json.loads((SHARED_DATA / "bm25_test_top30.json").read_text())
    qids = sorted(q for q in top if q in queries)
    random.Random(seed).shuffle(qids)
    out = [
        Request(queries[q], [texts[d] for d, _ in top[q] if d in texts]) for q in qids[:requests]
    ]
    return Workload("manpages", out)


def make(name: str, requests: int, seed: int = 0) -> Workload:
    """The workload ``name``: one of SHAPES or ``manpages``."""
    if name == "manpages":
        return manpages(requests, seed)
    return synthetic(name, requests, seed)
