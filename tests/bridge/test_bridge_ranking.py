"""Applying a ranking to a response: window, tail, scores, pagination, min_score, the rest kept."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from bridge_samples import hit, ranked, response
from hypothesis import given
from hypothesis import strategies as st

from rerankd_bridge.ranking import (
    Page,
    RerankOptions,
    apply_ranking,
    candidates,
    first_stage,
    plan_fetch,
    rerank_block,
    to_score,
)

BLOCK = rerank_block("reranked")


def ids(resp: dict[str, Any]) -> list[str]:
    return [h["_id"] for h in resp["hits"]["hits"]]


def reverse_scores(n: int) -> dict[int, float]:
    """A reranker that exactly reverses the first-stage order of the first n hits."""
    return {pos: float(pos) for pos in range(n)}


def test_window_reranked_tail_in_first_stage_order() -> None:
    options = RerankOptions(window=3)
    out = apply_ranking(ranked(6), Page(0, 6), options, reverse_scores(3), BLOCK)
    assert ids(out) == ["d2", "d1", "d0", "d3", "d4", "d5"]
    assert [h["_score"] for h in out["hits"]["hits"]] == [2.0, 1.0, 0.0, 3.0, 2.0, 1.0]
    assert out["hits"]["max_score"] == 2.0


def test_first_stage_score_kept_under_named_field() -> None:
    options = RerankOptions(window=2, first_stage_score_field="bm25")
    source = ranked(3)
    source["hits"]["hits"][0]["fields"] = {"title": ["x"]}
    out = apply_ranking(source, Page(0, 3), options, {0: 0.1, 1: 0.9}, BLOCK)
    first = out["hits"]["hits"][1]
    assert first["_id"] == "d0"
    assert first["fields"] == {"title": ["x"], "bm25": [3.0]}
    assert out["hits"]["hits"][2]["fields"] == {"bm25": [1.0]}


def test_no_first_stage_field_when_disabled() -> None:
    options = RerankOptions(window=2, first_stage_score_field=None)
    out = apply_ranking(ranked(2), Page(0, 2), options, {0: 0.1, 1: 0.9}, BLOCK)
    assert all("fields" not in h for h in out["hits"]["hits"])


def test_ties_keep_first_stage_order() -> None:
    out = apply_ranking(
        ranked(4), Page(0, 4), RerankOptions(window=4), dict.fromkeys(range(4), 0.5), BLOCK
    )
    assert ids(out) == ["d0", "d1", "d2", "d3"]


def test_everything_else_untouched_and_input_not_mutated() -> None:
    source = ranked(5)
    before = copy.deepcopy(source)
    out = apply_ranking(source, Page(1, 2), RerankOptions(window=5), reverse_scores(5), BLOCK)
    assert source == before
    for key in ("took", "timed_out", "_shards", "aggregations", "suggest"):
        assert out[key] == source[key]
    assert out["hits"]["total"] == {"value": 5, "relation": "eq"}
    assert out["rerank"] == {"status": "reranked"}
    assert ids(out) == ["d3", "d2"]


def test_hits_total_as_int_is_kept() -> None:
    source = ranked(2)
    source["hits"]["total"] = 2  # rest_total_hits_as_int=true
    out = apply_ranking(source, Page(0, 2), RerankOptions(window=2), reverse_scores(2), BLOCK)
    assert out["hits"]["total"] == 2


def test_min_score_drops_low_hits_and_the_tail() -> None:
    options = RerankOptions(window=3, min_score=0.5)
    out = apply_ranking(ranked(5), Page(0, 10), options, {0: 0.2, 1: 0.9, 2: 0.5}, BLOCK)
    assert ids(out) == ["d1", "d2"]


def test_min_score_that_drops_every_hit_leaves_no_max_score() -> None:
    options = RerankOptions(window=3, min_score=0.95)
    out = apply_ranking(ranked(5), Page(0, 10), options, {0: 0.2, 1: 0.9, 2: 0.5}, BLOCK)
    assert ids(out) == [] and out["hits"]["max_score"] is None
    kept = apply_ranking(ranked(5), Page(0, 10), RerankOptions(window=3, min_score=0.5),
                         {0: 0.2, 1: 0.9, 2: 0.5}, BLOCK)  # fmt: skip
    assert kept["hits"]["max_score"] == 0.9


def test_skipped_keeps_first_stage_order_without_min_score() -> None:
    options = RerankOptions(window=3, min_score=0.5)
    out = apply_ranking(ranked(3), Page(1, 5), options, None, rerank_block("skipped"))
    assert ids(out) == ["d1", "d2"]
    assert [h["_score"] for h in out["hits"]["hits"]] == [2.0, 1.0]
    assert out["hits"]["max_score"] == 3.0


def test_missing_text_policies() -> None:
    source = response(
        [hit("a", 3.0, {"text": "x"}), hit("b", 2.0, {}), hit("c", 1.0, {"text": "z"})]
    )
    found = candidates(source, RerankOptions())
    assert [c.text for c in found] == ["x", None, "z"]
    empty = to_score(found, RerankOptions(missing_text="empty"))
    assert [(c.position, c.text) for c in empty] == [(0, "x"), (1, ""), (2, "z")]
    last = to_score(found, RerankOptions(missing_text="last"))
    assert [c.position for c in last] == [0, 2]
    out = apply_ranking(
        source, Page(0, 3), RerankOptions(missing_text="last"), {0: 0.1, 2: 0.9}, BLOCK
    )
    assert ids(out) == ["c", "a", "b"]
    assert out["hits"]["hits"][2]["_score"] == 2.0


def test_first_stage_annotates_hits_in_place() -> None:
    out = first_stage(ranked(2), RerankOptions(), rerank_block("not_needed"))
    assert ids(out) == ["d0", "d1"]
    assert out["hits"]["hits"][0]["fields"] == {"_first_stage_score": [2.0]}


@pytest.mark.parametrize(
    ("page", "window", "min_score", "expected"),
    [
        (Page(0, 10), 100, None, (0, 100, True)),
        (Page(95, 10), 100, None, (0, 105, True)),
        (Page(100, 10), 100, None, (100, 10, False)),
        (Page(0, 0), 100, None, (0, 0, False)),
        (Page(200, 10), 50, 0.3, (0, 50, True)),
    ],
)
def test_plan_fetch(
    page: Page, window: int, min_score: float | None, expected: tuple[int, int, bool]
) -> None:
    plan = plan_fetch(page, RerankOptions(window=window, min_score=min_score))
    assert (plan.from_, plan.size, plan.rerank) == expected


@pytest.mark.parametrize(
    "kwargs",
    [{"window": 0}, {"fields": ()}, {"fields": "text"}, {"missing_text": "drop"}, {"timeout": 0}],
)
def test_bad_options_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RerankOptions(**kwargs)


def test_bad_page_rejected() -> None:
    for bad in ("three", "3x", "", 2.5, True, None, [3]):
        with pytest.raises(ValueError):
            Page.of({"from": bad})
    with pytest.raises(ValueError):
        Page(-1, 10)
    with pytest.raises(ValueError):
        Page.of({"size": "-1"})


def test_page_numbers_may_be_strings_of_digits() -> None:
    # Both engines read "from": "3" as 3.
    assert Page.of({"from": "3", "size": " 20"}) == Page(3, 20)


def global_order(n_hits: int, window: int, size: int, scores: list[float]) -> list[list[str]]:
    """Page through the results as a client does: one engine fetch per page, then slice."""
    options = RerankOptions(window=window)
    pages = []
    for from_ in range(0, n_hits + size, size):
        page = Page(from_, size)
        plan = plan_fetch(page, options)
        fetched = ranked(n_hits)
        fetched["hits"]["hits"] = fetched["hits"]["hits"][plan.from_ : plan.from_ + plan.size]
        if plan.rerank:
            n_window = min(window, len(fetched["hits"]["hits"]))
            by_pos = {pos: scores[pos] for pos in range(n_window)}
            out = apply_ranking(fetched, page, options, by_pos, BLOCK)
        else:
            out = first_stage(fetched, options, BLOCK)
        pages.append(ids(out))
    return pages


@given(
    n_hits=st.integers(0, 40),
    window=st.integers(1, 30),
    size=st.integers(1, 12),
    scores=st.lists(st.floats(-5, 5, allow_nan=False), min_size=40, max_size=40),
)
def test_paging_never_loses_or_repeats_a_hit(
    n_hits: int, window: int, size: int, scores: list[float]
) -> None:
    pages = global_order(n_hits, window, size, scores)
    seen = [doc for page in pages for doc in page]
    assert sorted(seen) == sorted(f"d{i}" for i in range(n_hits))
    assert len(seen) == len(set(seen))
    # Below the window the first-stage order holds; inside it, scores descend.
    tail = seen[min(window, n_hits) :]
    assert tail == [f"d{i}" for i in range(min(window, n_hits), n_hits)]
    head = [scores[int(doc[1:])] for doc in seen[: min(window, n_hits)]]
    assert head == sorted(head, reverse=True)
