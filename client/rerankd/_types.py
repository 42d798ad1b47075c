"""Plain result and input types of the rerankd client.

They mirror the messages of ``rerankd.v1`` but are frozen dataclasses, so callers never see
generated protobuf classes and can compare, hash and serialize results with the standard
library (``dataclasses.asdict``). The conversion from and to protobuf lives in
``rerankd.client`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

Truncation: TypeAlias = Literal["default", "end", "start", "none"]
#: How logits become scores: "default" (the model's activation, or raw with raw_scores),
#: "model", "raw" or "sigmoid".
Normalization: TypeAlias = Literal["default", "model", "raw", "sigmoid"]
NORMALIZATIONS: tuple[Normalization, ...] = ("default", "model", "raw", "sigmoid")
"""What the server does with a (query, document) pair longer than the model's maximum.

``"default"``: the model's own truncation (the longer side is cut, normally at its end);
``"end"`` / ``"start"``: cut the longer side at its end / start; ``"none"``: never cut, so an
over-long pair fails the call with :class:`~rerankd.errors.InvalidArgument`.
"""

TRUNCATIONS: tuple[Truncation, ...] = ("default", "end", "start", "none")
"""The values of :data:`Truncation`, in the order of the wire enum."""


@dataclass(frozen=True)
class Document:
    """A candidate to rerank: its text and an optional caller id echoed back in results."""

    text: str
    id: str = ""


DocumentLike: TypeAlias = str | Document | tuple[str, str]
"""What ``rerank`` accepts per document: a text, a :class:`Document`, or an ``(id, text)`` tuple."""


@dataclass(frozen=True)
class Chunking:
    """Score over-long documents in chunks instead of truncating them.

    ``max_chunks`` 0 means the server's default (16); ``reduce`` is "max", "mean" or "first".
    """

    max_chunks: int = 0
    overlap_tokens: int = 0
    reduce: Literal["max", "mean", "first"] = "max"


@dataclass(frozen=True)
class ChunkInfo:
    """Which chunk gave a document its score: UTF-8 byte offsets into the document text."""

    index: int
    count: int
    start_byte: int
    end_byte: int


@dataclass(frozen=True)
class RerankResult:
    """One scored document.

    ``index`` is the document's position in the request; ``text`` is empty unless the call
    asked for ``return_documents``. Higher ``score`` is more relevant. ``chunk`` is set when
    the call asked for chunking.
    """

    index: int
    id: str
    score: float
    text: str
    chunk: ChunkInfo | None = None


@dataclass(frozen=True)
class Usage:
    """What a call cost on the server: tokens after truncation, truncated pairs, time spent
    queued and in the model (microseconds), and the number of model batches it touched."""

    input_tokens: int
    truncated_pairs: int
    queue_time_us: int
    inference_time_us: int
    batches: int
    cached_pairs: int = 0
    scored_pairs: int = 0


@dataclass(frozen=True)
class Reranked:
    """The answer to ``rerank``: results best first (ties by ascending index), cut to
    ``top_n`` when one was given."""

    results: list[RerankResult]
    model: str
    usage: Usage


@dataclass(frozen=True)
class Scored:
    """The answer to ``score``: ``scores[i]`` belongs to the i-th pair of the request."""

    scores: list[float]
    model: str
    usage: Usage


@dataclass(frozen=True)
class BatchingLimits:
    """How the server forms model batches (token budget, pairs per batch, queue bounds)."""

    max_batch_tokens: int
    max_batch_size: int
    padded_batches: bool
    max_queue_pairs: int
    max_queue_tokens: int


@dataclass(frozen=True)
class RequestLimits:
    """Per-request limits; a request that breaks one fails with InvalidArgument."""

    max_documents: int
    max_query_bytes: int
    max_document_bytes: int
    max_message_bytes: int
    max_stream_in_flight: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """The served model, its batching, the request limits and the server version, flattened
    from ``GetModelInfoResponse`` so one object answers "what am I talking to"."""

    name: str
    max_input_tokens: int
    activation: str
    dtype: str
    device: str
    attention_implementation: str
    batching: BatchingLimits
    limits: RequestLimits
    server_version: str
    served_models: tuple[str, ...] = ()
    modules: str = ""  # the module chain, e.g. "Transformer(ModernBertModel) > Pooling(cls) > ..."


@dataclass(frozen=True)
class StreamResult:
    """One answer of a rerank stream: ``reranked`` when ``error`` is None."""

    request_id: str
    reranked: Reranked | None
    error: Exception | None
