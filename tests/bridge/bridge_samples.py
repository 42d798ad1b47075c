"""Search responses shaped as OpenSearch and Elasticsearch document them, for the bridge tests.

Each builder returns a fresh dict, so a test that mutates one cannot affect another.
"""

from __future__ import annotations

from typing import Any


def hit(
    doc_id: str, score: float, source: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """One hit as both engines return it (``_index``, ``_id``, ``_score``, ``_source``)."""
    out: dict[str, Any] = {"_index": "docs", "_id": doc_id, "_score": score}
    if source is not None:
        out["_source"] = source
    out.update(extra)
    return out


def response(hits: list[dict[str, Any]], total: int | None = None) -> dict[str, Any]:
    """A full ``_search`` answer around ``hits``, with aggregations and suggestions."""
    return {
        "took": 5,
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {
            "total": {"value": len(hits) if total is None else total, "relation": "eq"},
            "max_score": max((h["_score"] for h in hits), default=None),
            "hits": hits,
        },
        "aggregations": {
            "by_section": {
                "doc_count_error_upper_bound": 0,
                "sum_other_doc_count": 0,
                "buckets": [{"key": "man1", "doc_count": len(hits)}],
            }
        },
        "suggest": {"my-suggestion": [{"text": "lst", "offset": 0, "length": 3, "options": []}]},
    }


def ranked(n: int) -> dict[str, Any]:
    """``n`` hits with ids d0..d{n-1} in first-stage order, scores descending, text ``t{i}``."""
    return response([hit(f"d{i}", float(n - i), {"text": f"t{i}"}) for i in range(n)])


# A nested document with chunks returned as inner hits (OpenSearch "nested" query docs).
NESTED_HIT: dict[str, Any] = {
    "_index": "docs",
    "_id": "1",
    "_score": 1.8,
    "_source": {
        "title": "ls",
        "meta": {"section": "1", "tags": ["files", "directories"]},
        "passages": [{"text": "list directory contents"}, {"text": "sort entries"}],
        "man.name": "ls - list",
    },
    "inner_hits": {
        "passages": {
            "hits": {
                "total": {"value": 2, "relation": "eq"},
                "max_score": 1.2,
                "hits": [
                    {
                        "_index": "docs",
                        "_id": "1",
                        "_nested": {"field": "passages", "offset": 1},
                        "_score": 1.2,
                        "_source": {"text": "sort entries"},
                    },
                    {
                        "_index": "docs",
                        "_id": "1",
                        "_nested": {"field": "passages", "offset": 0},
                        "_score": 0.7,
                        "_source": {"text": "list directory contents"},
                    },
                ],
            }
        }
    },
}

# ``"_source": false`` with ``"fields": [...]`` and a highlight, as in the OpenSearch
# rerank tutorial.
FIELDS_HIT: dict[str, Any] = {
    "_index": "docs",
    "_id": "2",
    "_score": 2.5,
    "fields": {"passage_text": ["Carson City is the capital"], "meta.year": [2019]},
    "highlight": {"passage_text": ["Carson City is the <em>capital</em>"]},
}
