"""Every validation path returns its status code, and the server keeps serving afterwards."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.errors import ModelLoadError
from rerankd_server.scoring.base import Scorer
from rerankd_server.settings import CALL_BYTES, Settings
from support.fake_scorer import FakeScorer
from support.metrics import scrape
from support.sidecar import RunningSidecar, run_sidecar

Code = grpc.StatusCode
LIMITS = dict(
    max_documents=5, max_query_bytes=100, max_document_bytes=1000, max_message_bytes=20_000
)


@pytest.fixture(scope="module")
def running(tiny_models: dict[str, Path]) -> Iterator[RunningSidecar]:
    settings = Settings(model=str(tiny_models["modernbert"]), device="cpu", **LIMITS)
    with run_sidecar(settings) as running:
        yield running


@pytest.fixture
def stub(running: RunningSidecar) -> Iterator[rerank_pb2_grpc.RerankServiceStub]:
    with grpc.insecure_channel(running.target) as channel:
        yield rerank_pb2_grpc.RerankServiceStub(channel)


def docs(*texts: str) -> list[pb.Document]:
    return [pb.Document(id=str(i), text=t) for i, t in enumerate(texts)]


BAD_REQUESTS: dict[str, tuple[str, object, Code, str]] = {
    "empty query": (
        "Rerank",
        pb.RerankRequest(query="", documents=docs("a")),
        Code.INVALID_ARGUMENT,
        "query is empty",
    ),
    "blank query": (
        "Rerank",
        pb.RerankRequest(query=" \n\t", documents=docs("a")),
        Code.INVALID_ARGUMENT,
        "query is empty",
    ),
    "no documents": ("Rerank", pb.RerankRequest(query="q"), Code.INVALID_ARGUMENT, "no documents"),
    "too many documents": (
        "Rerank",
        pb.RerankRequest(query="q", documents=docs(*"abcdef")),
        Code.INVALID_ARGUMENT,
        "limit is 5",
    ),
    "query too long": (
        "Rerank",
        pb.RerankRequest(query="é" * 51, documents=docs("a")),
        Code.INVALID_ARGUMENT,
        "102 bytes",
    ),
    "document too long": (
        "Rerank",
        pb.RerankRequest(query="q", documents=docs("a", "x" * 1001)),
        Code.INVALID_ARGUMENT,
        "documents[1].text",
    ),
    "over-long and no truncation": (
        "Rerank",
        pb.RerankRequest(
            query="q", documents=docs("a", "word " * 199), truncation=pb.TRUNCATION_NONE
        ),
        Code.INVALID_ARGUMENT,
        "TRUNCATION_NONE",
    ),
    "unknown truncation": (
        "Rerank",
        pb.RerankRequest(query="q", documents=docs("a"), truncation=9),
        Code.INVALID_ARGUMENT,
        "truncation",
    ),  # type: ignore[arg-type]
    "unknown model": (
        "Rerank",
        pb.RerankRequest(query="q", documents=docs("a"), model="nope"),
        Code.NOT_FOUND,
        "nope",
    ),
    "message too large": (
        "Rerank",
        pb.RerankRequest(query="q", documents=docs(*["y" * 900] * 25)),
        Code.RESOURCE_EXHAUSTED,
        "",
    ),
    "score without pairs": ("Score", pb.ScoreRequest(), Code.INVALID_ARGUMENT, "no pairs"),
    "score with empty query": (
        "Score",
        pb.ScoreRequest(pairs=[pb.Pair(query="q", text="a"), pb.Pair(query="", text="b")]),
        Code.INVALID_ARGUMENT,
        "pairs[1].query",
    ),
    "min_score NaN": (
        "Rerank",
        pb.RerankRequest(query="q", documents=docs("a"), min_score=float("nan")),
        Code.INVALID_ARGUMENT,
        "min_score is NaN",
    ),
    "info for unknown model": (
        "GetModelInfo",
        pb.GetModelInfoRequest(model="nope"),
        Code.NOT_FOUND,
        "nope",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_request_gets_its_status_and_the_server_goes_on(
    stub: rerank_pb2_grpc.RerankServiceStub, case: str
) -> None:
    method, request, code, detail = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(request, timeout=30)
    assert err.value.code() == code
    assert detail in err.value.details()
    good = stub.Rerank(pb.RerankRequest(query="q", documents=docs("a", "")), timeout=30)
    assert len(good.results) == 2


@pytest.mark.parametrize(
    "payload", [b"\xff\xff\xff", b"\x0a\x02\xc3\x28"], ids=["garbage", "non-utf8"]
)
def test_malformed_bytes_are_invalid_argument(running: RunningSidecar, payload: bytes) -> None:
    with grpc.insecure_channel(running.target) as channel:
        call = channel.unary_unary("/rerankd.v1.RerankService/Rerank")
        with pytest.raises(grpc.RpcError) as err:
            call(payload, timeout=30)
    assert err.value.code() == Code.INVALID_ARGUMENT


def test_infinite_min_score_is_a_valid_bound(stub: rerank_pb2_grpc.RerankServiceStub) -> None:
    """Unlike NaN, an infinite bound has a meaning: keep everything, or nothing."""
    request = pb.RerankRequest(query="q", documents=docs("a", "b"), min_score=float("-inf"))
    assert len(stub.Rerank(request, timeout=30).results) == 2
    request.min_score = float("inf")
    assert len(stub.Rerank(request, timeout=30).results) == 0


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2) holding ``payload`` (< 128 bytes)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_a_stream_item_that_does_not_parse_is_answered_with_its_request_id(
    running: RunningSidecar,
) -> None:
    """The id is recovered when the item's own framing is intact and the id is UTF-8; else the
    answer has an empty request_id (and still INVALID_ARGUMENT)."""
    good = pb.RerankRequest(query="q", documents=docs("a")).SerializeToString()
    not_utf8 = b"\xc3\x28"
    items = {
        "ok": field(1, b"ok") + field(2, good),
        "bad query": field(1, b"bad query") + field(2, field(1, not_utf8)),
        "id after the request": field(2, field(1, not_utf8)) + field(1, b"id after the request"),
        "bad document": field(1, b"bad document") + field(2, field(2, field(2, not_utf8))),
        "": field(1, not_utf8) + field(2, good),  # the id itself cannot be read
    }
    with grpc.insecure_channel(running.target) as channel:
        stream = channel.stream_stream(
            "/rerankd.v1.RerankService/RerankStream",
            response_deserializer=pb.RerankStreamResponse.FromString,
        )
        replies = list(stream(iter(items.values()), timeout=60))
    codes = {reply.request_id: reply.code for reply in replies}
    invalid = Code.INVALID_ARGUMENT.value[0]
    assert codes == {key: 0 if key == "ok" else invalid for key in items}


def test_valid_edge_cases(stub: rerank_pb2_grpc.RerankServiceStub) -> None:
    response = stub.Rerank(
        pb.RerankRequest(query="q", documents=docs("a", "", "b"), top_n=2, return_documents=True)
    )
    assert len(response.results) == 2
    assert all(r.text == ["a", "", "b"][r.index] for r in response.results)
    everything = stub.Rerank(pb.RerankRequest(query="q", documents=docs("a", "b"), top_n=99))
    assert len(everything.results) == 2 and all(r.text == "" for r in everything.results)


def test_expired_deadline_is_deadline_exceeded(stub: rerank_pb2_grpc.RerankServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Rerank(pb.RerankRequest(query="q", documents=docs(*["w " * 100] * 5)), timeout=1e-4)
    assert err.value.code() == Code.DEADLINE_EXCEEDED


def _fake_factory(
    scorer: FakeScorer, started: threading.Event | None = None
) -> Callable[[Settings], Scorer]:
    def factory(_: Settings) -> Scorer:
        if started is not None:
            started.wait(30)
        return scorer

    return factory


def test_full_queue_is_resource_exhausted_then_recovers() -> None:
    scorer = FakeScorer()
    settings = Settings(
        model="fake", max_queue_pairs=6, max_documents=4, max_batch_size=1, warmup=False
    )
    with (
        run_sidecar(settings, _fake_factory(scorer)) as running,
        grpc.insecure_channel(running.target) as channel,
    ):
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        scorer.gate.clear()
        held = stub.Rerank.future(pb.RerankRequest(query="q", documents=docs("a", "b", "c", "d")))
        while not scorer.events:
            threading.Event().wait(0.01)
        with pytest.raises(grpc.RpcError) as err:
            stub.Rerank(pb.RerankRequest(query="q", documents=docs("a", "b", "c")), timeout=30)
        assert err.value.code() == Code.RESOURCE_EXHAUSTED
        scorer.gate.set()
        assert len(held.result(timeout=30).results) == 4
        assert (
            len(stub.Rerank(pb.RerankRequest(query="q", documents=docs("a", "b", "c"))).results)
            == 3
        )


def test_a_chunked_call_the_full_queue_refuses_is_not_tokenized() -> None:
    """Chunking takes each document's token spans before its pairs reach the queue; a call the
    queue refuses anyway is refused first, so an overloaded server spends no CPU on it."""
    spans_taken: list[int] = []

    class Counting(FakeScorer):
        def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
            spans_taken.append(len(texts))
            return super().token_spans(texts)

    scorer = Counting()
    settings = Settings(
        model="fake", max_queue_pairs=6, max_documents=4, max_batch_size=1, warmup=False
    )
    chunked = pb.RerankRequest(query="q", documents=docs("a b", "c d", "e f"), chunking={})
    with (
        run_sidecar(settings, _fake_factory(scorer)) as running,
        grpc.insecure_channel(running.target) as channel,
    ):
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        scorer.gate.clear()
        try:
            held = stub.Rerank.future(pb.RerankRequest(query="q", documents=docs(*"abcd")))
            while not scorer.events:
                threading.Event().wait(0.01)
            with pytest.raises(grpc.RpcError) as err:
                stub.Rerank(chunked, timeout=30)
            assert err.value.code() == Code.RESOURCE_EXHAUSTED
            assert spans_taken == []
        finally:
            scorer.gate.set()
        assert len(held.result(timeout=30).results) == 4
        assert len(stub.Rerank(chunked, timeout=30).results) == 3
        assert spans_taken  # planned once there was room


def test_request_bytes_past_the_queue_bound_are_resource_exhausted_until_released() -> None:
    """Calls hold their request bytes while answered, counted against --max-queue-bytes: a
    call past it is refused at once, a stream item as well; the bytes come back when a call
    ends, however it ends (answered, invalid, cancelled by its client)."""
    scorer = FakeScorer()
    settings = Settings(  # room for two calls' own costs and 10 KB of requests
        model="fake",
        max_queue_bytes=2 * CALL_BYTES + 10_000,
        max_message_bytes=10_000,
        warmup=False,
    )
    text = "w " * 3000
    big = pb.RerankRequest(query="q", documents=docs(text))  # 6 KB: one fits, two do not
    assert 5_000 < big.ByteSize() <= 10_000 < 2 * big.ByteSize()

    def item(request_id: str) -> pb.RerankStreamRequest:
        return pb.RerankStreamRequest(request_id=request_id, request=big)

    with (
        run_sidecar(settings, _fake_factory(scorer), metrics=True) as running,
        grpc.insecure_channel(running.target) as channel,
    ):
        stub = rerank_pb2_grpc.RerankServiceStub(channel)

        def held_bytes() -> float:
            return scrape(running.sidecar.metrics_port)[("rerankd_queue_bytes", ())]

        def held_by(future: grpc.Future, before: int) -> None:
            """Wait until ``future``'s call, sent when the fake had logged ``before`` events,
            is in the (closed) model."""
            while "forward 1" not in scorer.events[before:]:
                assert not future.done(), future.exception()
                threading.Event().wait(0.01)

        def admitted_again() -> None:
            """A large call succeeds once the bytes of the calls before it came back (a
            cancel reaches the server a moment after the client sent it)."""
            for _ in range(100):
                try:
                    assert len(stub.Rerank(big, timeout=30).results) == 1
                    return
                except grpc.RpcError as exc:
                    assert exc.code() == Code.RESOURCE_EXHAUSTED
                    threading.Event().wait(0.05)
            pytest.fail("the bytes of an ended call were never given back")

        scorer.gate.clear()
        try:
            before = len(scorer.events)
            holder = stub.Rerank.future(big)
            held_by(holder, before)
            assert held_bytes() == CALL_BYTES + big.ByteSize()  # its size on the wire
            for call in (
                lambda: stub.Rerank(big, timeout=30),
                lambda: stub.Score(
                    pb.ScoreRequest(pairs=[pb.Pair(query="q", text=text)]), timeout=30
                ),
            ):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == Code.RESOURCE_EXHAUSTED
                assert "--max-queue-bytes" in (err.value.details() or "")
            replies = list(stub.RerankStream(iter([item("a")]), timeout=30))
            assert [(r.request_id, r.code) for r in replies] == [
                ("a", Code.RESOURCE_EXHAUSTED.value[0])
            ]
        finally:
            scorer.gate.set()
        assert len(holder.result(timeout=30).results) == 1
        admitted_again()

        with pytest.raises(grpc.RpcError) as err:
            stub.Rerank(pb.RerankRequest(query="q", documents=docs(text), truncation=99))
        assert err.value.code() == Code.INVALID_ARGUMENT
        admitted_again()

        assert [r.code for r in stub.RerankStream(iter([item("b")]), timeout=30)] == [0]
        admitted_again()

        scorer.gate.clear()
        before = len(scorer.events)
        leaving = stub.Rerank.future(big)
        try:
            held_by(leaving, before)
            leaving.cancel()
        finally:
            scorer.gate.set()
        admitted_again()
        for _ in range(100):  # the last call's bytes come back once gRPC has ended it, which
            if not held_bytes():  # can be a moment after its client had the answer
                break
            threading.Event().wait(0.05)
        assert held_bytes() == 0


def test_unavailable_and_not_serving_while_loading() -> None:
    release = threading.Event()
    settings = Settings(model="fake", warmup=False)
    with (
        run_sidecar(settings, _fake_factory(FakeScorer(), release), wait_ready=False) as running,
        grpc.insecure_channel(running.target) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="rerankd.v1.RerankService")
        assert health.Check(check, timeout=10).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Rerank(pb.RerankRequest(query="q", documents=docs("a")), timeout=10)
        assert err.value.code() == Code.UNAVAILABLE
        release.set()
        asyncio.run_coroutine_threadsafe(running.sidecar.ready(), running.loop).result(30)
        assert health.Check(check, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        assert len(stub.Rerank(pb.RerankRequest(query="q", documents=docs("a"))).results) == 1


def test_model_that_cannot_load_is_reported() -> None:
    def broken(_: Settings) -> Scorer:
        raise ModelLoadError("cannot load model 'x'")

    with pytest.raises(ModelLoadError), run_sidecar(Settings(model="x"), broken):
        pass
