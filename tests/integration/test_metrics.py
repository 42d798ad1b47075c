"""What /metrics says after calls: requests by method and code, their latency, the batches."""

from __future__ import annotations

import time

import grpc
import pytest

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.settings import Settings
from support.fake_scorer import FakeScorer
from support.metrics import scrape
from support.sidecar import run_sidecar


def test_calls_and_their_batches_are_counted() -> None:
    settings = Settings(model="fake", warmup=False)
    with (
        run_sidecar(settings, lambda _: FakeScorer(), metrics=True) as running,
        grpc.insecure_channel(running.target) as channel,
    ):
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        for docs in (3, 2):
            stub.Rerank(pb.RerankRequest(query="q", documents=[pb.Document(text="d")] * docs))
        samples = scrape(running.sidecar.metrics_port)
    assert samples[("rerankd_requests_total", (("code", "OK"), ("method", "Rerank")))] == 2
    assert samples[("rerankd_request_duration_seconds_count", (("method", "Rerank"),))] == 2
    batches = samples[("rerankd_batches_total", ())]
    assert batches >= 2 and samples[("rerankd_pairs_total", ())] == 5
    assert samples[("rerankd_batch_pairs_count", ())] == batches
    assert samples[("rerankd_batch_pairs_sum", ())] == 5
    assert samples[("rerankd_batch_tokens_count", ())] == batches


def test_a_call_past_its_deadline_is_counted_as_deadline_exceeded() -> None:
    # gRPC cancels the handler when the deadline passes; that is not the client leaving.
    scorer = FakeScorer()
    scorer.gate.clear()  # the model holds every batch
    settings = Settings(model="fake", warmup=False)
    key = ("rerankd_requests_total", (("code", "DEADLINE_EXCEEDED"), ("method", "Rerank")))
    with (
        run_sidecar(settings, lambda _: scorer, metrics=True) as running,
        grpc.insecure_channel(running.target) as channel,
    ):
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        request = pb.RerankRequest(query="q", documents=[pb.Document(text="d")])
        large = pb.RerankRequest(query="q", documents=[pb.Document(text="word " * 100)] * 500)
        calls = [(request, 0.2), (request, 0.02)] + [(large, 0.02)] * 3
        for message, timeout in calls:  # the queue's own timer, or gRPC's cancel, ends them
            with pytest.raises(grpc.RpcError) as caught:
                stub.Rerank(message, timeout=timeout)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        scorer.gate.set()
        deadline = time.monotonic() + 10
        while (samples := scrape(running.sidecar.metrics_port)).get(key) != len(calls):
            assert time.monotonic() < deadline, samples
            time.sleep(0.05)
    assert ("rerankd_requests_total", (("code", "CANCELLED"), ("method", "Rerank"))) not in samples
