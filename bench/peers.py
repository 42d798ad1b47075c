"""In-process peers: what an application gets without a server, and the batched ceiling.

* ``CrossEncoder.predict`` once per query, as an application reranking each search would.
* ``CrossEncoder.predict`` over the whole workload at once: batching across requests with
  Sentence Transformers' fixed batch size (the offline ceiling a server is compared to).
* ``direct``: rerankd's own scorer over all pairs sorted by length in token-budget batches, with
  no scheduler, no gRPC: the best in-process batched throughput this code can reach, which
  serving efficiency divides by.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench.workloads import Workload

#: The direct peers' largest batch: rerankd's default ``--max-batch-size`` (bench's too).
MAX_BATCH_SIZE = 128


@dataclass(frozen=True)
class PeerResult:
    """Throughput of an in-process run, with per-request latencies when it has requests."""

    pairs: int
    tokens: int
    wall_s: float
    latencies: list[float]
    padding_efficiency: float

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.wall_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


def load_cross_encoder(model: str, dtype: str, device: str = "cpu") -> Any:
    """Sentence Transformers' CrossEncoder on ``device``, in the given dtype."""
    import torch
    from sentence_transformers import CrossEncoder

    return CrossEncoder(model, device=device, model_kwargs={"dtype": getattr(torch, dtype)})


def _padding_of_predict(lengths: list[int], batch_size: int) -> float:
    """CrossEncoder.predict sorts by length, then pads each batch to its longest pair."""
    ordered = sorted(lengths)
    computed = sum(
        max(ordered[i : i + batch_size]) * len(ordered[i : i + batch_size])
        for i in range(0, len(ordered), batch_size)
    )
    return sum(lengths) / computed


def predict_per_query(
    ce: Any, workload: Workload, lengths: list[list[int]], batch_size: int = 32
) -> PeerResult:
    """One ``predict`` call per request, back to back."""
    ce.predict([workload.pairs[0]], batch_size=batch_size)  # warm
    latencies = []
    start = time.perf_counter()
    for req in workload.requests:
        began = time.perf_counter()
        ce.predict([(req.query, d) for d in req.documents], batch_size=batch_size)
        latencies.append(time.perf_counter() - began)
    wall = time.perf_counter() - start
    computed = sum(sum(lens) / _padding_of_predict(lens, batch_size) for lens in lengths if lens)
    flat = sum(sum(lens) for lens in lengths)
    return PeerResult(workload.pair_count, flat, wall, latencies, flat / computed)


def predict_whole(
    ce: Any, workload: Workload, lengths: list[list[int]], batch_size: int = 32
) -> PeerResult:
    """One ``predict`` call over every pair of the workload."""
    flat = [n for lens in lengths for n in lens]
    start = time.perf_counter()
    ce.predict(workload.pairs, batch_size=batch_size)
    wall = time.perf_counter() - start
    return PeerResult(len(flat), sum(flat), wall, [], _padding_of_predict(flat, batch_size))


def direct_batched(
    model: str, dtype: str, workload: Workload, budget: int, device: str
) -> PeerResult:
    """rerankd's scorer, all pairs sorted by length, greedy token-budget batches (cut by the
    padded cost; on CUDA the scorer may run them packed, so only real tokens are computed)."""
    scorer = _direct_scorer(model, dtype, budget, device)
    start = time.perf_counter()
    real, computed = _sorted_batches(scorer, workload.pairs, budget)
    wall = time.perf_counter() - start
    return PeerResult(workload.pair_count, real, wall, [], real / computed)


def direct_per_request(
    model: str, dtype: str, workload: Workload, budget: int, device: str
) -> PeerResult:
    """The same, one request at a time: each latency is what that call alone costs offline
    (tokenization and its own sorted batches), the floor for a server's low-load latency."""
    scorer = _direct_scorer(model, dtype, budget, device)
    latencies, real, computed = [], 0, 0
    start = time.perf_counter()
    for request in workload.requests:
        began = time.perf_counter()
        pairs = [(request.query, doc) for doc in request.documents]
        r, c = _sorted_batches(scorer, pairs, budget)
        latencies.append(time.perf_counter() - began)
        real, computed = real + r, computed + c
    wall = time.perf_counter() - start
    return PeerResult(workload.pair_count, real, wall, latencies, real / computed)


def _direct_scorer(model: str, dtype: str, budget: int, device: str) -> Any:
    """The server's scorer with the server's own choice of attention for ``device``."""
    from rerankd_server.scoring.hf import HFCrossEncoder, resolve_placement

    scorer = HFCrossEncoder(model, resolve_placement(device, dtype, "auto"))
    scorer.warmup(min(budget, 2048), MAX_BATCH_SIZE)
    return scorer


def _sorted_batches(scorer: Any, pairs: list[tuple[str, str]], budget: int) -> tuple[int, int]:
    """Tokenize, sort by length, run greedy padded batches; (real, computed) tokens."""
    from rerankd_server.scoring.base import Truncation

    tokens = scorer.tokenize(pairs, Truncation.DEFAULT)
    order = sorted(range(len(tokens.ids)), key=lambda i: len(tokens.ids[i]))
    batches: list[list[int]] = [[]]
    for i in order:  # ascending: the newest pair is the longest of its batch
        batch = batches[-1]
        if batch and (
            (len(batch) + 1) * len(tokens.ids[i]) > budget or len(batch) >= MAX_BATCH_SIZE
        ):
            batches.append(batch := [])
        batch.append(i)
    computed = 0
    for batch in batches:
        ids = [tokens.ids[i] for i in batch]
        types = [tokens.type_ids[i] for i in batch] if tokens.type_ids is not None else None
        scorer.forward(scorer.collate(ids, types))
        padded = max(len(row) for row in ids) * len(ids)
        computed += padded if scorer.info.padded else sum(len(row) for row in ids)
    return sum(len(row) for row in tokens.ids), computed
