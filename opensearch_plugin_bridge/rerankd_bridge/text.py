"""Candidate text from search hits: the words a cross-encoder reads for each hit.

Pure functions over the JSON of one hit, as OpenSearch and Elasticsearch return it. A field
path is looked up the way OpenSearch's rerank processor does (``fields`` first, then
``_source``), and extended so that every place a hit can carry text is reachable:

- ``"title"``, ``"meta.title"``: a dotted path into ``fields`` (keys there are full dotted
  names) and then ``_source`` (nested objects, literal dotted keys, arrays of objects);
- ``"inner_hits.NAME.PATH"``: PATH in every inner hit of the ``inner_hits`` block NAME (the
  chunks of a nested or collapsed document), in the engine's order;
- ``"highlight.FIELD"``: the highlight fragments of FIELD.

Arrays are flattened, nested objects give their string leaves in document order, and numbers
and booleans become their JSON text, so a hit never crashes extraction. Blank values count
as absent.

Before a text is sent, :func:`fit_text` makes it something the reranker accepts whatever the
index holds: lone surrogates (valid in JSON as ``"\\ud83d"``, not encodable as UTF-8, so
refused by protobuf) become U+FFFD, and a text far longer than the model can read is cut.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rerankd.text import visible
from rerankd_bridge.wire import Literal

__all__ = ["as_mapping", "clean_text", "field_values", "fit_text", "hit_text", "lookup_path"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def hit_text(hit: Mapping[str, Any], fields: Sequence[str], separator: str = "\n") -> str | None:
    """Join the values of ``fields`` in ``hit`` with ``separator``, fields in the order given.

    Returns None when no field has any non-blank value, so the caller applies its
    missing-text policy instead of scoring an accidental empty string.
    """
    parts = [value for field in fields for value in field_values(hit, field)]
    return separator.join(parts) if parts else None


def field_values(hit: Mapping[str, Any], field: str) -> list[str]:
    """The non-blank string values of one field path in ``hit`` (see the module docstring)."""
    head, _, rest = field.partition(".")
    if head == "inner_hits" and rest:
        name, _, path = rest.partition(".")
        block = as_mapping(as_mapping(hit.get("inner_hits")).get(name))
        inner = as_mapping(block.get("hits")).get("hits")
        if not path or not isinstance(inner, list):
            return []
        return [
            value for sub in inner if isinstance(sub, Mapping) for value in field_values(sub, path)
        ]
    if head == "highlight" and rest:
        return list(_strings(as_mapping(hit.get("highlight")).get(rest)))
    parts = field.split(".")
    found = list(_walk(hit.get("fields"), parts))
    return found or list(_walk(hit.get("_source"), parts))


def lookup_path(document: Any, path: str) -> Any:
    """The value at dotted ``path`` in a JSON document, or None when it is absent.

    Keys may themselves contain dots (the longest key that matches wins). As OpenSearch's
    ``query_text_path`` examples rely on, a trailing ``.query`` that meets the short form of a
    query (``{"match": {"text": "words"}}``) yields the string itself.
    """
    parts = path.split(".") if path else []
    node = document
    while parts:
        if isinstance(node, str) and parts == ["query"]:
            return node
        if not isinstance(node, Mapping):
            return None
        for cut in range(len(parts), 0, -1):
            key = ".".join(parts[:cut])
            if key in node:
                node, parts = node[key], parts[cut:]
                break
        else:
            return None
    return node


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD, so it encodes as UTF-8.

    A Python string parsed from JSON holds a surrogate only when it was unpaired (JSON's
    ``"\\ud83d\\ude00"`` pairs become one character).
    """
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def fit_text(text: str, max_chars: int, max_bytes: int) -> str:
    """``text`` cleaned (:func:`clean_text`) and cut to ``max_chars`` characters and
    ``max_bytes`` bytes of UTF-8, keeping its start (what truncation keeps); 0: no bound."""
    if max_chars and len(text) > max_chars:
        text = text[:max_chars]
    text = clean_text(text)
    if max_bytes and len(text) > max_bytes // 4:  # below that even 4-byte characters fit
        encoded = text.encode()
        if len(encoded) > max_bytes:
            text = encoded[:max_bytes].decode(errors="ignore")  # drops a split last character
    return text


def as_mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one: hits may lack any block."""
    return value if isinstance(value, Mapping) else {}


def _walk(node: Any, parts: list[str]) -> Iterator[str]:
    """Yield the strings at ``parts`` below ``node``, fanning out over arrays of objects."""
    if not parts:
        yield from _strings(node)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, parts)
    elif isinstance(node, Mapping):
        for cut in range(len(parts), 0, -1):
            key = ".".join(parts[:cut])
            if key in node:
                yield from _walk(node[key], parts[cut:])
                return


def _strings(node: Any) -> Iterator[str]:
    """Yield the text leaves that show (``rerankd.text.visible``) of a JSON value in document
    order."""
    if isinstance(node, str):
        if visible(node):
            yield node
    elif isinstance(node, Literal):
        yield node.text  # as the engine wrote it
    elif isinstance(node, bool | int | float):
        yield json.dumps(node)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, Mapping):
        for item in node.values():
            yield from _strings(item)
