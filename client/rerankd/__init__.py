"""rerankd client: rerank documents with a rerankd sidecar over gRPC.

``Client`` (blocking) and ``AsyncClient`` (asyncio) return small frozen dataclasses and raise
typed errors, so callers never handle protobuf or grpc types::

    with rerankd.Client("localhost:50051") as client:
        best = client.rerank("query", ["doc one", "doc two"], top_n=1).results[0]
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from rerankd._types import (
    TRUNCATIONS,
    BatchingLimits,
    Document,
    DocumentLike,
    ModelInfo,
    RequestLimits,
    Reranked,
    RerankResult,
    Scored,
    Truncation,
    Usage,
)
from rerankd.client import DEFAULT_TARGET, AsyncClient, Client
from rerankd.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RerankdError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)

try:
    __version__ = version("rerankd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "DEFAULT_TARGET",
    "TRUNCATIONS",
    "AsyncClient",
    "BatchingLimits",
    "Client",
    "DeadlineExceeded",
    "Document",
    "DocumentLike",
    "Internal",
    "InvalidArgument",
    "ModelInfo",
    "NotFound",
    "PermissionDenied",
    "RequestLimits",
    "RerankResult",
    "RerankdError",
    "Reranked",
    "ResourceExhausted",
    "Scored",
    "Truncation",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "__version__",
    "from_rpc_error",
]
