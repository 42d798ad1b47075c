"""A catalog of bad (and odd but valid) inputs, each with the status it must get.

Every entry is sent as raw bytes through ``channel.unary_unary``, so malformed protobuf and
non-UTF-8 strings travel exactly like well-formed requests. After each one the same server must
answer a good request; the Prometheus endpoint must have counted the call under its status
code; and the response must echo the caller's ``x-request-id``. The catalog runs against the
tiny random ModernBERT with the default limits; the broken-model entries (NaN and infinite
scores) against the deterministic FakeScorer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.scoring.base import FloatArray
from rerankd_server.settings import Settings, parse_settings
from support.fake_scorer import FakeScorer, token_id
from support.metrics import scrape
from support.sidecar import RunningSidecar, run_sidecar
from support.wire import length_delimited

from .helpers import FAKE_MODEL, fake_factory, h2_call, requests_total

Code = grpc.StatusCode
TIMEOUT = 60.0
DEFAULTS = Settings()  # the limits under test are the shipped defaults

RESPONSES: dict[str, Callable[[bytes], Any]] = {
    "Rerank": pb.RerankResponse.FromString,
    "Score": pb.ScoreResponse.FromString,
    "GetModelInfo": pb.GetModelInfoResponse.FromString,
}


def docs(*texts: str) -> list[pb.Document]:
    return [pb.Document(id=f"d{i}", text=t) for i, t in enumerate(texts)]


def words(size: int) -> str:
    """``size`` bytes of real words (the tokenizer sees text, not one giant token)."""
    return ("list files in a directory and copy them " * (size // 40 + 1))[:size]


NOT_UTF8 = b"\xc3\x28"  # a UTF-8 lead byte followed by a non-continuation byte
GOOD = pb.RerankRequest(query="list files", documents=docs("ls lists files", "cp copies files"))


@dataclass(frozen=True)
class Case:
    """One catalog entry: a request (built lazily: some are megabytes) and what it must get."""

    method: str
    build: Callable[[], bytes]
    code: Code
    detail: str = ""  # a piece of the status details ("" = not checked)
    #: False when gRPC itself refuses the call before rerankd's handler runs (message size): no
    #: request id is sent back and rerankd's request counter does not see it.
    reaches_handler: bool = True
    check: Callable[[Any], None] | None = None  # more checks on an OK response
    marks: tuple[pytest.MarkDecorator, ...] = field(default=())


def rerank(**fields: Any) -> Callable[[], bytes]:
    return lambda: pb.RerankRequest(**fields).SerializeToString()


def score(**fields: Any) -> Callable[[], bytes]:
    return lambda: pb.ScoreRequest(**fields).SerializeToString()


def raw(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def results(count: int) -> Callable[[Any], None]:
    def check(response: pb.RerankResponse) -> None:
        assert sorted(r.index for r in response.results) == list(range(count))

    return check


def truncated(count: int) -> Callable[[Any], None]:
    def check(response: pb.RerankResponse) -> None:
        assert len(response.results) == count
        assert response.usage.truncated_pairs == count

    return check


def is_model_info(response: pb.GetModelInfoResponse) -> None:
    assert response.limits.max_documents == DEFAULTS.max_documents


INVALID, OK = Code.INVALID_ARGUMENT, Code.OK
LIMIT = DEFAULTS.max_documents
CATALOG: dict[str, Case] = {
    # --- the query
    "empty query": Case("Rerank", rerank(query="", documents=docs("a")), INVALID, "query is empty"),
    "whitespace query": Case(
        "Rerank", rerank(query=" \t\n\u3000\u2003", documents=docs("a")), INVALID, "query is empty"
    ),
    "query over 64 KiB": Case(
        "Rerank",
        rerank(query=words(DEFAULTS.max_query_bytes + 1), documents=docs("a")),
        INVALID,
        f"the limit is {DEFAULTS.max_query_bytes}",
    ),
    "query of zero-width characters and a BOM": Case(
        "Rerank",
        rerank(query="\u200b\u200c\u200d\u2060\ufeff", documents=docs("a")),
        INVALID,
        "query is empty",
    ),
    "query of NUL and other control characters only": Case(
        "Rerank", rerank(query="\x00\x01\x1b\x7f\x85 \u200b", documents=docs("a")), INVALID
    ),
    "query of control characters and NUL": Case(
        "Rerank", rerank(query="\x00\x01\x1b[31m\x7f", documents=docs("a", "b")), OK
    ),
    # --- the documents
    "no documents": Case("Rerank", rerank(query="q"), INVALID, "no documents"),
    "an empty document": Case(
        "Rerank", rerank(query="q", documents=docs("")), OK, check=results(1)
    ),
    "empty ids, repeated ids": Case(
        "Rerank",
        rerank(
            query="q", documents=[pb.Document(text="a"), pb.Document(id="x"), pb.Document(id="x")]
        ),
        OK,
        check=results(3),
    ),
    "emoji, RTL, combining marks, zero-width": Case(
        "Rerank",
        rerank(
            query="🔎 files",
            documents=docs("👩‍👩‍👧 ls", "مرحبا ls", "e\u0301\u0301\u0301", "\u200b\ufeff"),
        ),
        OK,
        check=results(4),
    ),
    "10,000 documents": Case(
        "Rerank",
        rerank(query="q", documents=docs(*["d"] * 10_000)),
        INVALID,
        f"more than {LIMIT} documents given; the limit is {LIMIT}",
    ),
    "one document over the limit": Case(
        "Rerank", rerank(query="q", documents=docs(*["d"] * (LIMIT + 1))), INVALID, "limit"
    ),
    "documents at the limit": Case(
        "Rerank", rerank(query="q", documents=docs(*["ls"] * LIMIT)), OK, check=results(LIMIT)
    ),
    "a 1 MB document": Case(
        "Rerank",
        rerank(query="q", documents=docs("ok", words(1_000_000))),
        INVALID,
        "documents[1].text has 1000000 bytes",
    ),
    "a 5 MB message of ten 500 KB documents": Case(
        "Rerank",
        rerank(query="q", documents=docs(*[words(500_000)] * 10)),
        OK,
        check=truncated(10),
        marks=(pytest.mark.slow,),  # ~6 s: the tokenizer reads every byte of 5 MB
    ),
    "a 9 MB message": Case(
        "Rerank",
        rerank(query="q", documents=docs(*[words(500_000)] * 18)),
        Code.RESOURCE_EXHAUSTED,
        "larger than max",
        reaches_handler=False,
    ),
    # --- the options
    "top_n above the document count": Case(
        "Rerank", rerank(query="q", documents=docs("a", "b", "c"), top_n=7), OK, check=results(3)
    ),
    "top_n at the uint32 maximum": Case(
        "Rerank", rerank(query="q", documents=docs("a", "b"), top_n=2**32 - 1), OK, check=results(2)
    ),
    "unknown truncation value": Case(
        "Rerank", rerank(query="q", documents=docs("a"), truncation=9), INVALID, "truncation"
    ),
    "negative truncation value": Case(
        "Rerank", rerank(query="q", documents=docs("a"), truncation=-1), INVALID, "truncation"
    ),
    "over-long pair with TRUNCATION_NONE": Case(
        "Rerank",
        rerank(query="q", documents=docs("a", words(4000)), truncation=pb.TRUNCATION_NONE),
        INVALID,
        "TRUNCATION_NONE",
    ),
    "unknown model name": Case(
        "Rerank", rerank(query="q", documents=docs("a"), model="no/such-model"), Code.NOT_FOUND
    ),
    "model name that is a path": Case(
        "Rerank", rerank(query="q", documents=docs("a"), model="/etc/passwd"), Code.NOT_FOUND
    ),
    "unknown model name of 1000 bytes": Case(
        "Rerank", rerank(query="q", documents=docs("a"), model="m" * 1000), Code.NOT_FOUND
    ),
    "model name of 100 KB": Case(
        "Rerank",
        rerank(query="q", documents=docs("a"), model="m" * 100_000),
        INVALID,
        "model has 100000 bytes; the limit is 1024",
    ),
    # --- bytes that are not a valid message
    "empty message": Case("Rerank", raw(b""), INVALID, "query is empty"),
    "malformed protobuf": Case("Rerank", raw(b"\xff\xff\xff\xff"), INVALID, "not a valid"),
    "truncated message": Case(
        "Rerank",
        raw(GOOD.SerializeToString()[:-3]),
        INVALID,
        "not a valid rerankd.v1.RerankRequest",
    ),
    "length prefix past the end": Case(
        "Rerank", raw(b"\x0a\x05q\x12\xff\xff\xff\x0f"), INVALID, "not a valid"
    ),
    "non-UTF-8 query": Case("Rerank", raw(length_delimited(1, NOT_UTF8)), INVALID, "not a valid"),
    "non-UTF-8 document text": Case(
        "Rerank",
        raw(length_delimited(1, b"q") + length_delimited(2, length_delimited(2, NOT_UTF8))),
        INVALID,
        "not a valid",
    ),
    "non-UTF-8 document id": Case(
        "Rerank",
        raw(length_delimited(1, b"q") + length_delimited(2, length_delimited(1, b"\xff"))),
        INVALID,
        "not a valid",
    ),
    "unknown fields (a newer client)": Case(
        "Rerank",
        raw(GOOD.SerializeToString() + b"\xa0\x06\x01\xaa\x06\x03abc"),
        OK,
        check=results(2),
    ),
    # --- Score and GetModelInfo
    "Score without pairs": Case("Score", score(), INVALID, "no pairs"),
    "Score with an empty query": Case(
        "Score",
        score(pairs=[pb.Pair(query="q", text="a"), pb.Pair(query="", text="b")]),
        INVALID,
        "pairs[1].query",
    ),
    "Score with a query of a zero-width space": Case(
        "Score",
        score(pairs=[pb.Pair(query="q", text="a"), pb.Pair(query="\u200b", text="b")]),
        INVALID,
        "pairs[1].query is empty",
    ),
    "Score with 10,000 pairs": Case(
        "Score",
        score(pairs=[pb.Pair(query="q", text="t")] * 10_000),
        INVALID,
        f"more than {LIMIT} pairs",
    ),
    "Score with non-UTF-8 text": Case(
        "Score",
        raw(length_delimited(1, length_delimited(1, b"q") + length_delimited(2, NOT_UTF8))),
        INVALID,
    ),
    "Score with an unknown model": Case(
        "Score", score(pairs=[pb.Pair(query="q", text="t")], model="nope"), Code.NOT_FOUND
    ),
    "GetModelInfo with garbage": Case("GetModelInfo", raw(b"\x0a\x02\xff\xfe"), INVALID),
    "Score with a model name of 100 KB": Case(
        "Score", score(pairs=[pb.Pair(query="q", text="t")], model="m" * 100_000), INVALID, "model"
    ),
    "GetModelInfo with a model name of 100 KB": Case(
        "GetModelInfo",
        pb.GetModelInfoRequest(model="m" * 100_000).SerializeToString,
        INVALID,
        "model has 100000 bytes",
    ),
    "GetModelInfo for an unknown model": Case(
        "GetModelInfo", pb.GetModelInfoRequest(model="nope").SerializeToString, Code.NOT_FOUND
    ),
    "GetModelInfo with an empty message": Case("GetModelInfo", raw(b""), OK, check=is_model_info),
}


@pytest.fixture(scope="module")
def tiny_server(tiny_models: dict[str, Path]) -> Iterator[RunningSidecar]:
    settings = Settings(model=str(tiny_models["modernbert"]), device="cpu")
    with run_sidecar(settings, metrics=True) as running:
        yield running


def response_metadata(call: Any) -> dict[str, str]:
    """Initial and trailing metadata of a finished call, together (x-request-id may be in either:
    the server sends it as trailing metadata so that gRPC can still retry the call)."""
    return {**dict(call.initial_metadata() or ()), **dict(call.trailing_metadata() or ())}


@dataclass
class Answer:
    code: Code
    details: str
    response: Any
    metadata: dict[str, str]


def call(target: str, method: str, payload: bytes, request_id: str | None = None) -> Answer:
    """Send ``payload`` as is to ``/rerankd.v1.RerankService/<method>``."""
    metadata = (("x-request-id", request_id),) if request_id else ()
    with grpc.insecure_channel(target) as channel:
        stub = channel.unary_unary(
            f"/rerankd.v1.RerankService/{method}", response_deserializer=RESPONSES[method]
        )
        try:
            response, rpc = stub.with_call(payload, metadata=metadata, timeout=TIMEOUT)
            return Answer(Code.OK, "", response, response_metadata(rpc))
        except grpc.RpcError as err:
            return Answer(err.code(), err.details() or "", None, response_metadata(err))


def assert_serves_a_good_request(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        answer = rerank_pb2_grpc.RerankServiceStub(channel).Rerank(GOOD, timeout=TIMEOUT)
    assert sorted(r.id for r in answer.results) == ["d0", "d1"]


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=case.marks, id=name) for name, case in CATALOG.items()]
)
def test_catalog_entry_gets_its_status_and_the_server_goes_on(
    tiny_server: RunningSidecar, name: str
) -> None:
    case = CATALOG[name]
    request_id = "catalog-" + "".join(c if c.isalnum() else "-" for c in name)
    before = scrape(tiny_server.sidecar.metrics_port)
    answer = call(tiny_server.target, case.method, case.build(), request_id)
    after = scrape(tiny_server.sidecar.metrics_port)

    assert answer.code == case.code, f"{name}: {answer.code.name} {answer.details!r}"
    assert case.detail in answer.details
    if case.check is not None:
        case.check(answer.response)
    counted = requests_total(after, case.method, case.code.name) - requests_total(
        before, case.method, case.code.name
    )
    if case.reaches_handler:
        assert answer.metadata.get("x-request-id") == request_id
        assert counted == 1, f"rerankd_requests_total{{code={case.code.name}}} did not count it"
    else:
        assert counted == 0
    assert_serves_a_good_request(tiny_server.target)


def test_request_id_is_generated_when_the_caller_sends_none(tiny_server: RunningSidecar) -> None:
    ok = call(tiny_server.target, "Rerank", GOOD.SerializeToString())
    refused = call(tiny_server.target, "Rerank", b"\xff")
    ids = [ok.metadata.get("x-request-id", ""), refused.metadata.get("x-request-id", "")]
    assert all(len(i) >= 8 for i in ids) and ids[0] != ids[1]


def test_a_request_id_cannot_flood_the_logs(tiny_server: RunningSidecar) -> None:
    answer = call(tiny_server.target, "Rerank", GOOD.SerializeToString(), "r" * 5000)
    assert answer.code == OK
    assert answer.metadata["x-request-id"] == "r" * 128  # cut, as logged


def test_the_answer_to_a_request_at_a_message_limit_above_64_mib_is_sent() -> None:
    """With ``return_documents`` the answer echoes every text and adds each result's index and
    score: it is larger than its request, so the answers' limit follows the requests' (it was
    gRPC's 64 MiB, and such an answer failed as RESOURCE_EXHAUSTED after all the work)."""
    limit = 70 * 2**20
    settings = dataclasses.replace(
        FAKE_MODEL,
        max_message_bytes=limit,
        max_queue_bytes=2 * limit,
        max_document_bytes=2**17,
    )
    text = "x" * 70_000
    request = pb.RerankRequest(
        query="q", documents=docs(*[text] * DEFAULTS.max_documents), return_documents=True
    )
    assert 64 * 2**20 < request.ByteSize() <= limit
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with (
        run_sidecar(settings, fake_factory()) as running,
        grpc.insecure_channel(running.target, options=options) as channel,
    ):
        answer = rerank_pb2_grpc.RerankServiceStub(channel).Rerank(request, timeout=TIMEOUT)
    assert answer.ByteSize() > request.ByteSize()
    assert len(answer.results) == DEFAULTS.max_documents
    assert all(r.text == text for r in answer.results)


#: ``x-request-id`` values gRPC cannot send back: control characters (a newline would forge a
#: log line), non-ASCII characters, bytes that are not UTF-8.
UNSAFE_IDS = [b"a\nb", "\u00e9".encode(), b"\xff\xfe", b"a\x00b", b"id\x7f", b"\tid"]


@pytest.mark.parametrize("sent", UNSAFE_IDS, ids=repr)
def test_a_request_id_that_cannot_be_sent_back_is_replaced(
    tiny_server: RunningSidecar, caplog: pytest.LogCaptureFixture, sent: bytes
) -> None:
    """gRPC's clients refuse to send such ids, so they come over plain HTTP/2; echoed, they
    failed the call in gRPC's core (INTERNAL "Invalid metadata", with an ERROR line)."""
    caplog.set_level(logging.DEBUG, logger="rerankd_server")
    caplog.set_level(logging.DEBUG, logger="grpc._cython.cygrpc")
    method = "/rerankd.v1.RerankService/Rerank"
    answer = h2_call(tiny_server.target, method, GOOD.SerializeToString(), [("x-request-id", sent)])
    assert answer["grpc-status"] == "0", answer
    echoed = answer["x-request-id"]
    assert len(echoed) >= 8 and echoed.isascii() and echoed.isprintable()
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == echoed]
    assert logged and all("\n" not in r.getMessage() for r in caplog.records)
    ours = [r for r in caplog.records if r.name.startswith(("grpc", "rerankd"))]
    assert not [r for r in ours if r.levelno >= logging.WARNING]
    # gRPC's own record of bytes that are not UTF-8, an ERROR with a traceback twice a call,
    # is one DEBUG line: the bytes are the caller's, not the server's fault.
    decoding = [r for r in ours if r.getMessage().startswith("Invalid encoding")]
    assert all(r.levelno == logging.DEBUG and not r.exc_info for r in decoding)
    assert bool(decoding) == (not is_utf8(sent)), decoding


def is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("size", [1000, 6_000_000], ids=["1000 bytes", "6 MB"])
def test_a_long_model_name_is_echoed_and_logged_as_a_short_prefix(
    tiny_server: RunningSidecar, caplog: pytest.LogCaptureFixture, size: int
) -> None:
    """The name is the caller's: the status details and the log line carry a prefix of it."""
    caplog.set_level(logging.INFO)
    request = pb.RerankRequest(query="q", documents=docs("a"), model="m" * size)
    answer = call(tiny_server.target, "Rerank", request.SerializeToString(), "long-model")
    assert answer.code == (Code.NOT_FOUND if size == 1000 else INVALID), answer.details[:200]
    served = tiny_server.sidecar.settings.served_name  # named in the details, as it should be
    assert len(answer.details) < 200 + len(served), answer.details[:200]
    logged = [r.getMessage() for r in caplog.records if "long-model" in r.getMessage()]
    assert logged, "the call's log line was not captured: the test is blind"
    assert max(len(m) for m in logged) < 300


def test_a_served_model_name_over_the_request_limit_is_refused_at_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every served model must be one a request can name."""
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(["--model", "/models/" + "m" * 1100], env={})
    assert exit_info.value.code == 2
    assert "over 1024 bytes" in capsys.readouterr().err


# --- a broken model: non-finite scores -------------------------------------------------------


class NonFiniteScorer(FakeScorer):
    """FakeScorer that scores pairs holding the word "bad" NaN and those holding "inf" +inf."""

    def forward(self, batch: Any) -> FloatArray:
        out = super().forward(batch)
        infinite = np.array([token_id("inf") in row for row in batch])
        return np.where(infinite, np.float32(np.inf), out).astype(np.float32)


@pytest.fixture(scope="module")
def broken_model() -> Iterator[tuple[RunningSidecar, NonFiniteScorer]]:
    scorer = NonFiniteScorer(poison="bad")
    with run_sidecar(FAKE_MODEL, fake_factory(scorer), metrics=True) as running:
        yield running, scorer


@pytest.mark.parametrize("word", ["bad", "inf"], ids=["NaN", "Inf"])
@pytest.mark.parametrize("raw_scores", [False, True], ids=["activated", "raw"])
def test_non_finite_score_is_internal_for_that_request_only(
    broken_model: tuple[RunningSidecar, NonFiniteScorer], word: str, raw_scores: bool
) -> None:
    running, _ = broken_model
    port = running.sidecar.metrics_port
    clean = pb.RerankRequest(query="list files", documents=docs("ls", "cp"), raw_scores=raw_scores)
    poisoned = pb.RerankRequest(
        query="list files", documents=docs("ls", f"a {word} one", "cp"), raw_scores=raw_scores
    )
    pair = pb.ScoreRequest(pairs=[pb.Pair(query="q", text=word)], raw_scores=raw_scores)
    assert call(running.target, "Rerank", clean.SerializeToString()).code == OK
    before = scrape(port)
    rerank_answer = call(running.target, "Rerank", poisoned.SerializeToString(), "poisoned")
    score_answer = call(running.target, "Score", pair.SerializeToString())
    after = scrape(port)
    for answer in (rerank_answer, score_answer):
        assert answer.code == Code.INTERNAL
        assert "non-finite" in answer.details
    assert rerank_answer.metadata["x-request-id"] == "poisoned"
    for method in ("Rerank", "Score"):
        internal = requests_total(after, method, "INTERNAL") - requests_total(
            before, method, "INTERNAL"
        )
        assert internal == 1, method
    assert call(running.target, "Rerank", clean.SerializeToString()).code == OK


def test_non_finite_score_does_not_fail_the_requests_sharing_its_batch(
    broken_model: tuple[RunningSidecar, NonFiniteScorer],
) -> None:
    """Hold the model so that a poisoned and a clean request queue up and share one batch."""
    running, scorer = broken_model
    port = running.sidecar.metrics_port

    def wait_for(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.005)

    def queued() -> float:
        return scrape(port)[("rerankd_queue_pairs", ())]

    def queued_tokens() -> float:  # reserved as a request joins the queue, after tokenizing
        return scrape(port)[("rerankd_queue_tokens", ())]

    assert queued() == 0
    with grpc.insecure_channel(running.target) as channel:
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        scorer.gate.clear()
        try:
            batches_before, start = len(scorer.batches), len(scorer.events)

            def seen(event: str) -> int:
                return scorer.events[start:].count(event)

            holder = stub.Rerank.future(pb.RerankRequest(query="hold", documents=docs("one")))
            wait_for(lambda: seen("forward 1") == 1, "the model to be busy")
            # While the model is busy the scheduler waits for it before forming a batch that
            # is not full, so the two requests below leave the queue together.
            poisoned = stub.Rerank.future(pb.RerankRequest(query="q", documents=docs("bad")))
            clean = stub.Rerank.future(pb.RerankRequest(query="q", documents=docs("good")))
            # 5 tokens each (1 + 1 words, 3 specials): all three are in the scheduler's queue.
            wait_for(lambda: queued_tokens() == 3 * 5, "both requests to be queued")
        finally:
            scorer.gate.set()
        for future in (holder, clean):
            assert len(future.result(timeout=TIMEOUT).results) == 1
        with pytest.raises(grpc.RpcError) as err:
            poisoned.result(timeout=TIMEOUT)
        assert err.value.code() == Code.INTERNAL
    poison = token_id("bad")
    shared = [b for b in scorer.batches[batches_before:] if any(poison in row for row in b)]
    assert shared and len(shared[0]) == 2, "the poisoned pair was not batched with the clean one"
    wait_for(lambda: queued() == 0, "the queue to empty")
