"""rerankd_bridge: rerank OpenSearch / Elasticsearch results with a rerankd sidecar.

Pure functions do the work (:mod:`~rerankd_bridge.text` extracts candidate text from hits,
:mod:`~rerankd_bridge.ranking` applies a ranking to a response inside a rank window with
consistent pagination); thin adapters do the transport: :func:`rerank_search` and
:func:`async_rerank_search` for the opensearch-py and elasticsearch clients, and an HTTP proxy
(``rerankd bridge``, :mod:`rerankd_bridge.proxy`) for any client in any language::

    from opensearchpy import OpenSearch
    from rerankd import Client
    from rerankd_bridge import RerankOptions, rerank_search

    with Client("localhost:50051") as reranker:
        response = rerank_search(
            OpenSearch("http://localhost:9200"), reranker, index="docs",
            body={"query": {"match": {"text": "list files"}}, "size": 10},
            options=RerankOptions(fields=("title", "text"), window=50),
        )
"""

from __future__ import annotations

from rerankd_bridge.ranking import MissingText, Page, RerankOptions, apply_ranking, plan_fetch
from rerankd_bridge.search import (
    RerankFailed,
    SearchJob,
    async_rerank_search,
    rerank_search,
)
from rerankd_bridge.spec import BridgeConfig, QuerySource, RerankSpec, parse_spec
from rerankd_bridge.stats import STATS, RerankStats
from rerankd_bridge.text import hit_text

__all__ = [
    "STATS",
    "BridgeConfig",
    "MissingText",
    "Page",
    "QuerySource",
    "RerankFailed",
    "RerankOptions",
    "RerankSpec",
    "RerankStats",
    "SearchJob",
    "apply_ranking",
    "async_rerank_search",
    "hit_text",
    "parse_spec",
    "plan_fetch",
    "rerank_search",
]
