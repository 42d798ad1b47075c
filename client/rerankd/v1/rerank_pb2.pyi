from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Truncation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUNCATION_UNSPECIFIED: _ClassVar[Truncation]
    TRUNCATION_END: _ClassVar[Truncation]
    TRUNCATION_START: _ClassVar[Truncation]
    TRUNCATION_NONE: _ClassVar[Truncation]

class Normalization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NORMALIZATION_UNSPECIFIED: _ClassVar[Normalization]
    NORMALIZATION_MODEL: _ClassVar[Normalization]
    NORMALIZATION_RAW: _ClassVar[Normalization]
    NORMALIZATION_SIGMOID: _ClassVar[Normalization]

class ChunkReduce(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHUNK_REDUCE_UNSPECIFIED: _ClassVar[ChunkReduce]
    CHUNK_REDUCE_MAX: _ClassVar[ChunkReduce]
    CHUNK_REDUCE_MEAN: _ClassVar[ChunkReduce]
    CHUNK_REDUCE_FIRST: _ClassVar[ChunkReduce]
TRUNCATION_UNSPECIFIED: Truncation
TRUNCATION_END: Truncation
TRUNCATION_START: Truncation
TRUNCATION_NONE: Truncation
NORMALIZATION_UNSPECIFIED: Normalization
NORMALIZATION_MODEL: Normalization
NORMALIZATION_RAW: Normalization
NORMALIZATION_SIGMOID: Normalization
CHUNK_REDUCE_UNSPECIFIED: ChunkReduce
CHUNK_REDUCE_MAX: ChunkReduce
CHUNK_REDUCE_MEAN: ChunkReduce
CHUNK_REDUCE_FIRST: ChunkReduce

class Chunking(_message.Message):
    __slots__ = ("max_chunks", "overlap_tokens", "reduce")
    MAX_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REDUCE_FIELD_NUMBER: _ClassVar[int]
    max_chunks: int
    overlap_tokens: int
    reduce: ChunkReduce
    def __init__(self, max_chunks: _Optional[int] = ..., overlap_tokens: _Optional[int] = ..., reduce: _Optional[_Union[ChunkReduce, str]] = ...) -> None: ...

class ChunkInfo(_message.Message):
    __slots__ = ("index", "count", "start_byte", "end_byte")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    START_BYTE_FIELD_NUMBER: _ClassVar[int]
    END_BYTE_FIELD_NUMBER: _ClassVar[int]
    index: int
    count: int
    start_byte: int
    end_byte: int
    def __init__(self, index: _Optional[int] = ..., count: _Optional[int] = ..., start_byte: _Optional[int] = ..., end_byte: _Optional[int] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("query", "documents", "top_n", "return_documents", "raw_scores", "truncation", "model", "chunking", "min_score", "normalization")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    RETURN_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    query: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    top_n: int
    return_documents: bool
    raw_scores: bool
    truncation: Truncation
    model: str
    chunking: Chunking
    min_score: float
    normalization: Normalization
    def __init__(self, query: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., top_n: _Optional[int] = ..., return_documents: _Optional[bool] = ..., raw_scores: _Optional[bool] = ..., truncation: _Optional[_Union[Truncation, str]] = ..., model: _Optional[str] = ..., chunking: _Optional[_Union[Chunking, _Mapping]] = ..., min_score: _Optional[float] = ..., normalization: _Optional[_Union[Normalization, str]] = ...) -> None: ...

class RerankResult(_message.Message):
    __slots__ = ("index", "id", "score", "text", "chunk")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    score: float
    text: str
    chunk: ChunkInfo
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., score: _Optional[float] = ..., text: _Optional[str] = ..., chunk: _Optional[_Union[ChunkInfo, _Mapping]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "truncated_pairs", "queue_time_us", "inference_time_us", "batches", "cached_pairs", "scored_pairs")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_PAIRS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    CACHED_PAIRS_FIELD_NUMBER: _ClassVar[int]
    SCORED_PAIRS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    truncated_pairs: int
    queue_time_us: int
    inference_time_us: int
    batches: int
    cached_pairs: int
    scored_pairs: int
    def __init__(self, input_tokens: _Optional[int] = ..., truncated_pairs: _Optional[int] = ..., queue_time_us: _Optional[int] = ..., inference_time_us: _Optional[int] = ..., batches: _Optional[int] = ..., cached_pairs: _Optional[int] = ..., scored_pairs: _Optional[int] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("results", "model", "usage")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RerankResult]
    model: str
    usage: Usage
    def __init__(self, results: _Optional[_Iterable[_Union[RerankResult, _Mapping]]] = ..., model: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class Pair(_message.Message):
    __slots__ = ("query", "text")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    query: str
    text: str
    def __init__(self, query: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("pairs", "raw_scores", "truncation", "model", "normalization")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[Pair]
    raw_scores: bool
    truncation: Truncation
    model: str
    normalization: Normalization
    def __init__(self, pairs: _Optional[_Iterable[_Union[Pair, _Mapping]]] = ..., raw_scores: _Optional[bool] = ..., truncation: _Optional[_Union[Truncation, str]] = ..., model: _Optional[str] = ..., normalization: _Optional[_Union[Normalization, str]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "model", "usage")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model: str
    usage: Usage
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class BatchingLimits(_message.Message):
    __slots__ = ("max_batch_tokens", "max_batch_size", "padded_batches", "max_queue_pairs", "max_queue_tokens")
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PADDED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_PAIRS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_batch_tokens: int
    max_batch_size: int
    padded_batches: bool
    max_queue_pairs: int
    max_queue_tokens: int
    def __init__(self, max_batch_tokens: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., padded_batches: _Optional[bool] = ..., max_queue_pairs: _Optional[int] = ..., max_queue_tokens: _Optional[int] = ...) -> None: ...

class RequestLimits(_message.Message):
    __slots__ = ("max_documents", "max_query_bytes", "max_document_bytes", "max_message_bytes", "max_stream_in_flight")
    MAX_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUERY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    max_documents: int
    max_query_bytes: int
    max_document_bytes: int
    max_message_bytes: int
    max_stream_in_flight: int
    def __init__(self, max_documents: _Optional[int] = ..., max_query_bytes: _Optional[int] = ..., max_document_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_stream_in_flight: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "max_input_tokens", "activation", "dtype", "device", "attention_implementation", "batching", "modules")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_input_tokens: int
    activation: str
    dtype: str
    device: str
    attention_implementation: str
    batching: BatchingLimits
    modules: str
    def __init__(self, name: _Optional[str] = ..., max_input_tokens: _Optional[int] = ..., activation: _Optional[str] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., attention_implementation: _Optional[str] = ..., batching: _Optional[_Union[BatchingLimits, _Mapping]] = ..., modules: _Optional[str] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model", "limits", "server_version", "models")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    limits: RequestLimits
    server_version: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., limits: _Optional[_Union[RequestLimits, _Mapping]] = ..., server_version: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class RerankStreamRequest(_message.Message):
    __slots__ = ("request_id", "request")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    request: RerankRequest
    def __init__(self, request_id: _Optional[str] = ..., request: _Optional[_Union[RerankRequest, _Mapping]] = ...) -> None: ...

class RerankStreamResponse(_message.Message):
    __slots__ = ("request_id", "response", "code", "message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    response: RerankResponse
    code: int
    message: str
    def __init__(self, request_id: _Optional[str] = ..., response: _Optional[_Union[RerankResponse, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
