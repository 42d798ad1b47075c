"""With OpenTelemetry installed, every RPC is a server span, child of the caller's trace."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.settings import Settings
from support.fake_scorer import FakeScorer
from support.sidecar import run_sidecar

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()


def test_each_call_is_a_span_in_the_callers_trace(exporter: InMemorySpanExporter) -> None:
    settings = Settings(model="fake", warmup=False)
    with (
        run_sidecar(settings, lambda _: FakeScorer()) as running,
        grpc.insecure_channel(running.target) as channel,
    ):
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT}-01"), ("x-request-id", "traced"))
        stub.Rerank(
            pb.RerankRequest(query="q", documents=[pb.Document(text="d")] * 3), metadata=metadata
        )
        with pytest.raises(grpc.RpcError):
            stub.Rerank(pb.RerankRequest(query="", documents=[pb.Document(text="d")]))
    spans = [s for s in exporter.get_finished_spans() if s.name.endswith("/Rerank")]
    assert len(spans) == 2
    ok, bad = spans
    assert ok.kind == trace.SpanKind.SERVER
    assert format(ok.context.trace_id, "032x") == TRACE_ID
    assert ok.parent is not None and format(ok.parent.span_id, "016x") == PARENT
    assert ok.attributes["rerankd.request_id"] == "traced"
    assert ok.attributes["rerankd.items"] == 3 and ok.attributes["rerankd.code"] == "OK"
    assert bad.attributes["rerankd.code"] == "INVALID_ARGUMENT"
    assert bad.attributes["rpc.grpc.status_code"] == 3
    assert format(bad.context.trace_id, "032x") != TRACE_ID  # no traceparent: a new trace
