"""``filter_path``, the response filter of OpenSearch and Elasticsearch, for the answers the
bridge rewrites.

The engine must send whole hits for them to be reranked (with ``filter_path`` it would leave
out the texts, and the order would be noise), so the bridge takes the parameter off the
search it forwards and applies it to its own answer, as the engine would have:

* comma-separated paths of dot-separated keys; ``*`` in a key matches any characters, a
  ``**`` key any number of levels (none included);
* arrays are looked through: a path applies to each element;
* a path starting with ``-`` excludes what it matches; exclusions are applied first;
* objects and arrays left empty are left out; nothing matched gives ``{}``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

__all__ = ["apply_filter_path"]

Path = tuple[str, ...]
_GONE = object()  # what filtering left of a value: nothing


def apply_filter_path(response: dict[str, Any], expression: str) -> dict[str, Any]:
    """``response`` filtered by a ``filter_path`` expression (``""``: unfiltered)."""
    value: Any = response
    includes: list[Path] = []
    excludes: list[Path] = []
    for item in expression.split(","):
        item = item.strip()
        if item:
            target = excludes if item.startswith("-") else includes
            target.append(tuple(item.removeprefix("-").split(".")))
    if excludes:
        value = _exclude(value, excludes)
    if includes:
        value = _include(value, includes)
    return {} if value is _GONE else value


def _here(paths: list[Path]) -> list[Path]:
    """The paths as they apply at this level: a leading ``**`` also matches no level."""
    out: list[Path] = []
    for path in paths:
        out.append(path)
        while path and path[0] == "**":
            path = path[1:]
            out.append(path)
    return out


def _below(paths: list[Path], key: str) -> list[Path]:
    """What is left of ``paths`` (already through :func:`_here`) under ``key``."""
    left: list[Path] = []
    for path in paths:
        if path and path[0] == "**":
            left.append(path)  # ``**`` goes on down
        elif path and fnmatch.fnmatchcase(key, path[0]):
            left.append(path[1:])
    return left


def _include(value: Any, paths: list[Path]) -> Any:
    paths = _here(paths)
    if () in paths:
        return value
    if isinstance(value, list):
        kept = [item for item in (_include(v, paths) for v in value) if item is not _GONE]
        return kept or _GONE
    if not isinstance(value, Mapping):
        return _GONE
    out = {}
    for key, item in value.items():
        below = _below(paths, str(key))
        if below and (kept := _include(item, below)) is not _GONE:
            out[key] = kept
    return out or _GONE


def _exclude(value: Any, paths: list[Path]) -> Any:
    paths = _here(paths)
    if isinstance(value, list):
        return [_exclude(item, paths) for item in value]
    if not isinstance(value, Mapping):
        return value
    out = {}
    for key, item in value.items():
        below = _below(paths, str(key))
        if () not in _here(below):
            out[key] = _exclude(item, below) if below else item
    return out
