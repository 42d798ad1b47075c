"""The ext.rerank block, the proxy config, and SearchJob's failure policy without any I/O."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from bridge_samples import ranked

from rerankd import DeadlineExceeded, Reranked, RerankResult, ResourceExhausted, Unavailable, Usage
from rerankd_bridge.ranking import RerankOptions
from rerankd_bridge.search import RerankFailed, SearchJob, job_for, strip_rerank_ext
from rerankd_bridge.spec import BridgeConfig, QuerySource, RerankSpec, parse_spec
from rerankd_bridge.stats import RerankStats

USAGE = Usage(0, 0, 0, 0, 0)


def test_opensearch_processor_shape_is_accepted() -> None:
    spec = parse_spec(
        {
            "query_context": {"query_text_path": "query.match.text.query"},
            "context": {"document_fields": ["title", "text"]},
            "rank_window_size": 20,
            "timeout_ms": 250,
            "min_score": 0.1,
            "first_stage_score_field": None,
        }
    )
    assert spec.query == QuerySource(path="query.match.text.query")
    assert spec.options == RerankOptions(
        fields=("title", "text"),
        window=20,
        timeout=0.25,
        min_score=0.1,
        first_stage_score_field=None,
    )


@pytest.mark.parametrize(
    "block",
    [
        {"windw": 3},
        {"query_context": {"query_txt": "x"}},
        {"query_text": "a", "query_text_path": "b"},
        {"window": "10"},
        {"window": 0},
        {"document_fields": "text"},
        {"strict": "yes"},
        [],
    ],
)
def test_bad_blocks_rejected(block: object) -> None:
    with pytest.raises(ValueError):
        parse_spec(block)  # type: ignore[arg-type]


def test_config_defaults_index_patterns_and_ext_override(tmp_path: Path) -> None:
    path = tmp_path / "bridge.json"
    path.write_text(
        json.dumps(
            {
                "defaults": {"timeout_ms": 500},
                "indices": {"man*": {"document_fields": ["text"], "window": 30}},
            }
        )
    )
    config = BridgeConfig.load(path)
    assert config.spec_for("logs", None) is None
    man = config.spec_for("manpages", None)
    assert man is not None and man.options.window == 30 and man.options.timeout == 0.5
    override = config.spec_for("manpages", {"window": 5})
    assert (
        override is not None
        and override.options.window == 5
        and override.options.fields == ("text",)
    )
    other = config.spec_for("logs", {"query_text": "q"})
    assert other is not None and other.options.timeout == 0.5 and other.query.text == "q"


def test_toml_config(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('[indices.docs]\ndocument_fields = ["body"]\n')
    spec = BridgeConfig.load(path).spec_for("docs", None)
    assert spec is not None and spec.options.fields == ("body",)


def test_strip_rerank_ext_keeps_other_ext() -> None:
    assert strip_rerank_ext({"ext": {"rerank": {}}, "size": 3}) == {"size": 3}
    assert strip_rerank_ext({"ext": {"rerank": {}, "other": 1}}) == {"ext": {"other": 1}}


def job(body: dict[str, object], stats: RerankStats, **options: object) -> SearchJob:
    return job_for(body, RerankOptions(**options), None, None, stats)  # type: ignore[arg-type]


def test_job_plans_the_window_and_reranks() -> None:
    stats = RerankStats()
    j = job({"query": {"match": {"text": "q"}}, "from": 1, "size": 2}, stats, window=4)
    assert j.engine_body() == {"query": {"match": {"text": "q"}}, "from": 0, "size": 4}
    response = ranked(4)
    call = j.call(response)
    assert call is not None and call.query == "q" and call.texts() == ["t0", "t1", "t2", "t3"]
    results = [RerankResult(i, "", float(i), "") for i in (3, 2, 1, 0)]
    out = j.finish(response, call, Reranked(results, "tiny", USAGE), 1.5)
    assert [h["_id"] for h in out["hits"]["hits"]] == ["d2", "d1"]
    assert out["rerank"] == {
        "status": "reranked",
        "window": 4,
        "scored": 4,
        "missing_text": 0,
        "model": "tiny",
        "took_ms": 1.5,
    }
    assert stats.get("reranked") == 1


@pytest.mark.parametrize(
    ("error", "reason", "http_status"),
    [
        (Unavailable(grpc.StatusCode.UNAVAILABLE, "down"), "unavailable", 503),
        (DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, "late"), "deadline_exceeded", 504),
        (ResourceExhausted(grpc.StatusCode.RESOURCE_EXHAUSTED, "full"), "resource_exhausted", 429),
    ],
)
def test_failures_fall_back_or_raise_when_strict(
    error: Exception, reason: str, http_status: int
) -> None:
    stats = RerankStats()
    body = {"query": {"match": {"text": "q"}}, "size": 3}
    lenient = job(body, stats, window=5)
    response = ranked(5)
    out = lenient.finish(response, lenient.call(response), error)  # type: ignore[arg-type]
    assert [h["_id"] for h in out["hits"]["hits"]] == ["d0", "d1", "d2"]
    assert out["rerank"]["status"] == "skipped" and out["rerank"]["reason"] == reason
    assert stats.get("skipped", reason) == 1
    strict = job(body, stats, window=5, strict=True)
    with pytest.raises(RerankFailed) as raised:
        strict.finish(response, strict.call(response), error)  # type: ignore[arg-type]
    assert raised.value.reason == reason and raised.value.http_status == http_status
    assert f'reason="{reason}"}} 2' in stats.prometheus()


@pytest.mark.parametrize(
    "query",
    [
        {"bool": {}},
        {"match": {"text": " \t"}},
        {"match": {"text": "\u200b\ufeff"}},  # zero-width: the server would refuse it
    ],
)
def test_no_query_text_is_skipped(query: dict[str, Any]) -> None:
    stats = RerankStats()
    j = SearchJob.prepare({"query": query}, RerankSpec(), stats)
    response = ranked(2)
    assert j.call(response) is None
    out = j.finish(response, None, None)
    assert out["rerank"]["reason"] == "no_query_text"


def test_page_below_window_not_reranked() -> None:
    stats = RerankStats()
    j = job({"query": {"match": {"text": "q"}}, "from": 10, "size": 5}, stats, window=10)
    assert j.engine_body()["from"] == 10 and j.engine_body()["size"] == 5
    response = ranked(5)
    assert j.call(response) is None
    out = j.finish(response, None, None)
    assert out["rerank"] == {"status": "not_needed", "reason": "below_window", "window": 10}
    assert stats.get("not_needed", "below_window") == 1
