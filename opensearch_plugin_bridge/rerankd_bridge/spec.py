"""What to rerank and with which query text: the ``ext.rerank`` block and the proxy's config.

The block is modelled on OpenSearch's rerank processor, so a body written for a search
pipeline works against the bridge unchanged::

    "ext": {"rerank": {
        "query_context": {"query_text": "..."} | {"query_text_path": "query.match.text.query"},
        "context": {"document_fields": ["title", "body"]},
        "window": 50, "min_score": 0.2, "missing_text": "empty", "separator": "\\n",
        "first_stage_score_field": "_first_stage_score", "strict": false, "timeout_ms": 2000,
        "model": "", "raw_scores": false
    }}

``rank_window_size`` is accepted for ``window`` (Elasticsearch's name), and ``query_text``,
``query_text_path`` and ``document_fields`` also at the top of the block. Every key is
optional; an unknown key is an error, so a typo never silently changes nothing.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerankd.text import visible
from rerankd_bridge.ranking import RerankOptions
from rerankd_bridge.text import as_mapping, lookup_path

__all__ = ["BridgeConfig", "QuerySource", "RerankSpec", "guess_query_text", "parse_spec"]

# Queries whose text can be taken without being told where it is.
_TEXT_QUERIES = ("multi_match", "query_string", "simple_query_string", "combined_fields")
_FIELD_QUERIES = ("match", "match_phrase", "match_bool_prefix")


@dataclass(frozen=True)
class QuerySource:
    """Where the query text comes from: given, or a dotted path into the search body.

    With neither, the text of a simple query (``match``, ``multi_match``, ``query_string``,
    ...) is used when the body has exactly one.
    """

    text: str | None = None
    path: str | None = None

    def resolve(self, body: Mapping[str, Any]) -> str | None:
        """The query text for ``body``, or None when there is none to be had."""
        if self.text is not None:
            value: Any = self.text
        elif self.path is not None:
            value = lookup_path(body, self.path)
        else:
            value = guess_query_text(body)
        return value if isinstance(value, str) and visible(value) else None


@dataclass(frozen=True)
class RerankSpec:
    """A complete request to rerank: the options and the query source."""

    options: RerankOptions = field(default_factory=RerankOptions)
    query: QuerySource = field(default_factory=QuerySource)


def guess_query_text(body: Mapping[str, Any]) -> str | None:
    """The text of a body whose ``query`` is one simple full-text query, else None."""
    query = as_mapping(body.get("query"))
    if len(query) != 1:
        return None
    ((kind, clause),) = query.items()
    clause = as_mapping(clause)
    if kind in _TEXT_QUERIES:
        text = clause.get("query")
    elif kind in _FIELD_QUERIES and len(clause) == 1:
        (value,) = clause.values()
        text = as_mapping(value).get("query") if isinstance(value, Mapping) else value
    else:
        return None
    return text if isinstance(text, str) else None


def parse_spec(block: Mapping[str, Any], base: RerankSpec | None = None) -> RerankSpec:
    """Read an ``ext.rerank`` block (or a config entry) over ``base``; raise ValueError if bad."""
    base = base or RerankSpec()
    if not isinstance(block, Mapping):
        raise ValueError(f"ext.rerank must be an object, not {block!r}")
    items = dict(block)
    query = _pop_object(items, "query_context")
    context = _pop_object(items, "context")
    text = query.pop("query_text", items.pop("query_text", None))
    path = query.pop("query_text_path", items.pop("query_text_path", None))
    fields = context.pop("document_fields", items.pop("document_fields", None))
    window = items.pop("rank_window_size", items.pop("window", None))
    changes: dict[str, Any] = {}
    if fields is not None:
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise ValueError(f"document_fields must be a list of strings, not {fields!r}")
        changes["fields"] = tuple(fields)
    if window is not None:
        changes["window"] = _int(window, "window")
    if "timeout_ms" in items:
        changes["timeout"] = _number(items.pop("timeout_ms"), "timeout_ms") / 1000.0
    if "min_score" in items:
        floor = items.pop("min_score")
        changes["min_score"] = None if floor is None else _number(floor, "min_score")
    for name, kind in (("separator", str), ("missing_text", str), ("model", str)):
        if name in items:
            changes[name] = _typed(items.pop(name), kind, name)
    for name in ("strict", "raw_scores"):
        if name in items:
            changes[name] = _typed(items.pop(name), bool, name)
    if "first_stage_score_field" in items:
        keep = items.pop("first_stage_score_field")
        changes["first_stage_score_field"] = (
            None if keep is None else _typed(keep, str, "first_stage_score_field")
        )
    leftover = sorted(
        {*items, *(f"query_context.{k}" for k in query), *(f"context.{k}" for k in context)}
    )
    if leftover:
        raise ValueError(f"unknown keys in ext.rerank: {', '.join(leftover)}")
    if text is not None and path is not None:
        raise ValueError("give query_text or query_text_path, not both")
    source = base.query
    if text is not None:
        source = QuerySource(text=_typed(text, str, "query_text"))
    elif path is not None:
        source = QuerySource(path=_typed(path, str, "query_text_path"))
    return RerankSpec(dataclasses.replace(base.options, **changes), source)


@dataclass(frozen=True)
class BridgeConfig:
    """The proxy's configuration file: per-index defaults that turn reranking on.

    JSON or TOML (by suffix)::

        {"defaults": {"timeout_ms": 1500},
         "indices": {"manpages": {"context": {"document_fields": ["text"]}, "window": 30},
                     "logs-*": {...}}}

    ``defaults`` apply under every index entry and every ``ext.rerank`` block but do not by
    themselves turn reranking on; an index entry does, for searches whose index expression
    matches its pattern (``fnmatch``; the first matching entry wins).
    """

    defaults: RerankSpec = field(default_factory=RerankSpec)
    indices: tuple[tuple[str, RerankSpec], ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: RerankSpec | None = None) -> BridgeConfig:
        """Build from the parsed file over ``base`` (e.g. the command line's timeout).

        Raises ValueError on unknown keys or bad values.
        """
        unknown = set(data) - {"defaults", "indices"}
        if unknown:
            raise ValueError(f"unknown keys in bridge config: {', '.join(sorted(unknown))}")
        defaults = parse_spec(as_mapping(data.get("defaults")), base)
        indices = tuple(
            (str(pattern), parse_spec(block, defaults))
            for pattern, block in as_mapping(data.get("indices")).items()
        )
        return cls(defaults, indices)

    @classmethod
    def load(cls, path: str | Path, base: RerankSpec | None = None) -> BridgeConfig:
        """Read a ``.toml`` or JSON file (see :meth:`from_mapping`)."""
        raw = Path(path).read_bytes()
        data = tomllib.loads(raw.decode()) if str(path).endswith(".toml") else json.loads(raw)
        return cls.from_mapping(as_mapping(data), base)

    def spec_for(self, index: str | None, ext: Any) -> RerankSpec | None:
        """The spec for a search of ``index`` whose body had ``ext.rerank`` = ``ext``.

        None when neither the body nor an index entry asks for reranking.
        """
        matched = next(
            (
                spec
                for pattern, spec in self.indices
                if index and fnmatch.fnmatchcase(index, pattern)
            ),
            None,
        )
        if ext is None:
            return matched
        return parse_spec(ext, matched or self.defaults)


def _pop_object(items: dict[str, Any], key: str) -> dict[str, Any]:
    value = items.pop(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be an object, not {value!r}")
    return dict(value)


def _typed(value: Any, kind: type, name: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a {kind.__name__}, not {value!r}")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    return value


def _number(value: Any, name: str) -> float:
    if not isinstance(value, bool) and isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if math.isfinite(number):
            return number
    raise ValueError(f"{name} must be a finite number, not {value!r}")
