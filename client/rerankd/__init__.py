"""rerankd client: rerank documents with a rerankd sidecar over gRPC.

``Client`` (blocking) and ``AsyncClient`` (asyncio) return small frozen dataclasses and raise
typed errors, so callers never handle protobuf or grpc types::

    with rerankd.Client("localhost:50051") as client:
        best = client.rerank("query", ["doc one", "doc two"], top_n=1).results[0]

Several replicas are balanced round-robin by gRPC itself: ``Client("dns:///rerankd:50051")``
or ``Client(["10.0.0.7:50051", "10.0.0.8:50051"])``; TLS, mTLS and bearer tokens are
arguments of the client (``tls=``, ``root_certificates=``, ``token=``, ...).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from rerankd._types import (
    NORMALIZATIONS,
    TRUNCATIONS,
    BatchingLimits,
    ChunkInfo,
    Chunking,
    Document,
    DocumentLike,
    ModelInfo,
    Normalization,
    RequestLimits,
    Reranked,
    RerankResult,
    Scored,
    StreamResult,
    Truncation,
    Usage,
)
from rerankd.client import DEFAULT_TARGET, AsyncClient, Client, Pem, Targets, channel_target
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
    "NORMALIZATIONS",
    "TRUNCATIONS",
    "AsyncClient",
    "BatchingLimits",
    "ChunkInfo",
    "Chunking",
    "Client",
    "DeadlineExceeded",
    "Document",
    "DocumentLike",
    "Internal",
    "InvalidArgument",
    "ModelInfo",
    "Normalization",
    "NotFound",
    "Pem",
    "PermissionDenied",
    "RequestLimits",
    "RerankResult",
    "RerankdError",
    "Reranked",
    "ResourceExhausted",
    "Scored",
    "StreamResult",
    "Targets",
    "Truncation",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "__version__",
    "channel_target",
    "from_rpc_error",
]
