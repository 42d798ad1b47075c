"""Candidate text extraction and query-text lookup on documented hit shapes."""

from __future__ import annotations

import pytest
from bridge_samples import FIELDS_HIT, NESTED_HIT

from rerankd_bridge.spec import guess_query_text
from rerankd_bridge.text import field_values, hit_text, lookup_path


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("title", ["ls"]),
        ("meta.section", ["1"]),
        ("meta.tags", ["files", "directories"]),
        ("meta", ["1", "files", "directories"]),
        ("passages.text", ["list directory contents", "sort entries"]),
        ("man.name", ["ls - list"]),
        ("inner_hits.passages.text", ["sort entries", "list directory contents"]),
        ("missing", []),
        ("inner_hits.nope.text", []),
        ("title.deeper", []),
    ],
)
def test_source_paths(field: str, expected: list[str]) -> None:
    assert field_values(NESTED_HIT, field) == expected


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("passage_text", ["Carson City is the capital"]),
        ("meta.year", ["2019"]),
        ("highlight.passage_text", ["Carson City is the <em>capital</em>"]),
    ],
)
def test_fields_and_highlight_without_source(field: str, expected: list[str]) -> None:
    assert field_values(FIELDS_HIT, field) == expected


def test_fields_win_over_source_without_duplicates() -> None:
    hit = {"_source": {"text": "from source"}, "fields": {"text": ["from fields"]}}
    assert hit_text(hit, ["text"]) == "from fields"


def test_fields_joined_in_given_order_with_separator() -> None:
    assert hit_text(NESTED_HIT, ["meta.tags", "title"], " | ") == "files | directories | ls"


@pytest.mark.parametrize(
    "hit",
    [
        {},
        {"_source": {"text": "   "}},
        {"_source": {"text": "\u200b\u2060"}},
        {"_source": {"text": None}},
    ],
)
def test_no_text_is_none(hit: dict[str, object]) -> None:
    assert hit_text(hit, ["text"]) is None


def test_odd_values_never_crash() -> None:
    hit = {"_source": {"a": [1, True, None, {"b": 2.5}], "c": "x"}, "inner_hits": "oops"}
    assert hit_text(hit, ["a", "inner_hits.x.y", "c"], ",") == "1,true,2.5,x"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("query.match.text.query", "list files"),
        ("query.match.text", {"query": "list files"}),
        ("ext.question", "why"),
        ("query.nope", None),
    ],
)
def test_lookup_path(path: str, expected: object) -> None:
    body = {"query": {"match": {"text": {"query": "list files"}}}, "ext": {"question": "why"}}
    assert lookup_path(body, path) == expected


def test_lookup_path_short_form_query() -> None:
    # OpenSearch's documented query_text_path example points ".query" at the short form.
    body = {"query": {"match": {"passage_text": "capital city"}}}
    assert lookup_path(body, "query.match.passage_text.query") == "capital city"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"match": {"text": "a b"}}, "a b"),
        ({"match": {"text": {"query": "a b", "operator": "and"}}}, "a b"),
        ({"multi_match": {"query": "a b", "fields": ["x", "y"]}}, "a b"),
        ({"query_string": {"query": "a AND b"}}, "a AND b"),
        ({"bool": {"must": [{"match": {"text": "a"}}]}}, None),
        ({"match": {"x": "a", "y": "b"}}, None),
    ],
)
def test_guess_query_text(query: dict[str, object], expected: str | None) -> None:
    assert guess_query_text({"query": query}) == expected
