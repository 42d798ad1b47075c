"""Property-based fuzzing (hypothesis) of Rerank and Score against a real tiny-model server.

The server runs the tiny random ModernBERT with lowered limits (20 documents, 300-byte queries,
2000-byte documents) so that generated requests hit the limit paths as often as the scoring
path. Each generated request is checked against an oracle that restates the documented rules
(proto comments, docs/api.md): the status must be the one the rules give (only OK,
INVALID_ARGUMENT or NOT_FOUND are possible; never UNKNOWN, INTERNAL or a timeout), and an OK
response must keep every documented invariant. Raw and mutated bytes are fuzzed too: whatever
the client's own protobuf parser makes of them, the server must agree.

``RERANKD_FUZZ_SCALE=10 python -m pytest tests/reliability/test_fuzz.py`` runs ten times the
examples (the default keeps the file to a few seconds for CI).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import regex
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rerankd.text import visible
from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.settings import Settings
from support.sidecar import RunningSidecar, run_sidecar

Code = grpc.StatusCode
OK, INVALID, NOT_FOUND = Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND
ALLOWED = {OK, INVALID, NOT_FOUND}

LIMITS = Settings(max_documents=20, max_query_bytes=300, max_document_bytes=2000)
#: Per-call deadline: a call still running after it is a hang (DEADLINE_EXCEEDED fails the test).
CALL_TIMEOUT = 20.0
SCALE = float(os.environ.get("RERANKD_FUZZ_SCALE", "1"))
#: Score and Rerank may batch a pair with different neighbours; padding can move the last bits.
SCORE_TOLERANCE = 1e-4


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, round(examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- strategies ------------------------------------------------------------------------------

#: Every code point but surrogates (which no UTF-8 string can hold).
CHARACTERS = st.characters(exclude_categories=("Cs",))
ODD_PIECES = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\t\r\n\x0b\x0c",
        "\x1b[2J\x07",
        "\u200b\u200c\u200d\ufeff",  # zero-width and BOM
        "\u202e\u2066",  # bidi overrides
        "\u3000\u2028\u2029\x85",  # unusual whitespace
        "🔎",
        "👩\u200d👩\u200d👧\u200d👦",  # one emoji of seven code points
        "🏳️\u200d🌈",
        "e\u0301\u0301\u0301\u0301",  # stacked combining marks
        "\ufdfd",
        "𒀱",
        "\U0010fffd\uffff\ufffe",  # private use and noncharacters
        "İß ﬃ ǅ",  # characters that change length when case-folded
        "[CLS] [SEP] [PAD] [MASK] <s> </s>",  # special-token look-alikes
        "ls - list directory contents",
    ]
)


def long_words(max_repeat: int) -> st.SearchStrategy[str]:
    """One character repeated (a single huge 'word'), up to ``max_repeat`` times."""
    return st.builds(lambda c, n: c * n, CHARACTERS, st.integers(1, max_repeat))


def texts(pieces: int, max_repeat: int) -> st.SearchStrategy[str]:
    piece = st.one_of(st.text(CHARACTERS, max_size=30), ODD_PIECES, long_words(max_repeat))
    separator = st.sampled_from(["", " ", "\n", "\x00"])
    return st.tuples(st.lists(piece, max_size=pieces), separator).map(lambda t: t[1].join(t[0]))


def mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` about 7 times in 8, ``rare`` otherwise: most requests get past validation.

    The pick is a middle value, not 0: hypothesis draws boundary values more often than 1 in 8.
    """
    return st.integers(0, 7).flatmap(lambda k: rare if k == 3 else usual)


#: Mostly valid queries (which may still come out blank); now and then one that breaks a rule.
QUERIES = mostly(
    st.builds(
        lambda before, word, after: f"{before} {word} {after}",
        texts(pieces=1, max_repeat=40),
        st.from_regex(r"[0-9A-Za-z\u00c0-\u024f]{1,12}", fullmatch=True),  # never blank
        texts(pieces=1, max_repeat=40),
    ),
    st.one_of(st.just(""), st.text(" \t\n\u3000\x85"), long_words(400)),  # blank or > 300 bytes
)
#: Mostly documents within 2000 bytes; now and then a huge single word that may break it.
DOC_TEXTS = mostly(texts(pieces=4, max_repeat=120), long_words(900))
IDS = st.one_of(st.just(""), st.text(CHARACTERS, max_size=12))
TOP_N = st.one_of(st.just(0), st.integers(0, 25), st.integers(0, 2**32 - 1))
#: 0..3 are the Truncation values; 4..7 are unknown to the server (INVALID_ARGUMENT).
TRUNCATION = mostly(st.integers(0, 3), st.integers(4, 7))


def counts(item: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """1..max_documents items mostly; now and then none or a few too many."""
    too_many = st.lists(item, min_size=LIMITS.max_documents + 1, max_size=LIMITS.max_documents + 3)
    return mostly(
        st.lists(item, min_size=1, max_size=LIMITS.max_documents),
        st.one_of(st.just([]), too_many),
    )


def models(served: str) -> st.SearchStrategy[str]:
    """The default (""), the served name, or (rarely) any other name."""
    return mostly(st.sampled_from(["", served]), st.text(CHARACTERS, max_size=20))


@st.composite
def rerank_requests(draw: st.DrawFn, served: str) -> pb.RerankRequest:
    documents = draw(counts(st.builds(pb.Document, id=IDS, text=DOC_TEXTS)))
    return pb.RerankRequest(
        query=draw(QUERIES),
        documents=documents,
        top_n=draw(TOP_N),
        return_documents=draw(st.booleans()),
        raw_scores=draw(st.booleans()),
        truncation=draw(TRUNCATION),
        model=draw(models(served)),
    )


@st.composite
def score_requests(draw: st.DrawFn, served: str) -> pb.ScoreRequest:
    pairs = draw(counts(st.builds(pb.Pair, query=QUERIES, text=DOC_TEXTS)))
    return pb.ScoreRequest(
        pairs=pairs,
        raw_scores=draw(st.booleans()),
        truncation=draw(TRUNCATION),
        model=draw(models(served)),
    )


# --- the oracle: the documented rules, restated ----------------------------------------------


def _utf8(text: str) -> int:
    return len(text.encode("utf-8"))


#: What a query must hold (docs/api.md): a character that is not whitespace, a control
#: character or one of Unicode's default-ignorable code points (the ``regex`` module knows them).
_SHOWS = regex.compile(r"[^\s\p{Cc}\p{Default_Ignorable_Code_Point}]")


def _blank(query: str) -> bool:
    return _SHOWS.search(query) is None


def test_the_server_tells_blank_queries_as_unicode_does() -> None:
    """Every code point, against the ``regex`` module's Unicode properties."""
    disagree = [
        hex(code)
        for code in range(0x110000)
        if not 0xD800 <= code < 0xE000 and visible(chr(code)) == _blank(chr(code))
    ]
    assert disagree == []


def expected_codes(
    model: str, queries: list[str], texts_: list[str], truncation: int, served: str
) -> set[Code]:
    """The statuses the documented rules allow for a request, in the server's order of checks."""
    if len(texts_) > LIMITS.max_documents:  # counted on the wire, before anything is parsed
        return {INVALID}
    if model not in ("", served):
        return {NOT_FOUND}
    if not texts_:
        return {INVALID}
    if any(_blank(q) or _utf8(q) > LIMITS.max_query_bytes for q in queries):
        return {INVALID}
    if any(_utf8(t) > LIMITS.max_document_bytes for t in texts_):
        return {INVALID}
    if truncation not in pb.Truncation.values():
        return {INVALID}
    if truncation == pb.TRUNCATION_NONE:
        return {OK, INVALID}  # INVALID_ARGUMENT when a pair is over the model's length
    return {OK}


def expected_for_rerank(request: pb.RerankRequest, served: str) -> set[Code]:
    texts_ = [d.text for d in request.documents]
    bad_query = _blank(request.query) or _utf8(request.query) > LIMITS.max_query_bytes
    if bad_query and len(texts_) <= LIMITS.max_documents:
        # Once parsed, the query is checked before the documents are counted.
        return {NOT_FOUND} if request.model not in ("", served) else {INVALID}
    return expected_codes(request.model, [request.query], texts_, request.truncation, served)


def expected_for_score(request: pb.ScoreRequest, served: str) -> set[Code]:
    return expected_codes(
        request.model,
        [p.query for p in request.pairs],
        [p.text for p in request.pairs],
        request.truncation,
        served,
    )


# --- the server and the calls ----------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(tiny_models: dict[str, Path]) -> Iterator[tuple[RunningSidecar, grpc.Channel]]:
    model = str(tiny_models["modernbert"])
    limits = {
        "max_documents": LIMITS.max_documents,
        "max_query_bytes": LIMITS.max_query_bytes,
        "max_document_bytes": LIMITS.max_document_bytes,
    }
    with (
        run_sidecar(Settings(model=model, device="cpu", **limits)) as running,
        grpc.insecure_channel(running.target) as channel,
    ):
        yield running, channel


def served_name(fuzz: tuple[RunningSidecar, grpc.Channel]) -> str:
    return fuzz[0].sidecar.settings.served_name


def invoke(
    channel: grpc.Channel, method: str, payload: bytes, response_type: Any
) -> tuple[Code, Any, str]:
    """Send raw bytes; return (code, parsed response or None, details)."""
    stub = channel.unary_unary(
        f"/rerankd.v1.RerankService/{method}", response_deserializer=response_type.FromString
    )
    try:
        return OK, stub(payload, timeout=CALL_TIMEOUT), ""
    except grpc.RpcError as err:
        return err.code(), None, err.details() or ""


def close(a: float, b: float) -> bool:
    return abs(a - b) <= SCORE_TOLERANCE * max(1.0, abs(a), abs(b))


def check_rerank_response(
    request: pb.RerankRequest, response: pb.RerankResponse, served: str, scores: list[float]
) -> None:
    """The documented invariants of an OK Rerank response; ``scores`` from Score, same pairs."""
    docs = request.documents
    count = len(docs)
    want = min(request.top_n, count) if request.top_n else count
    results = list(response.results)
    assert len(results) == want
    indexes = [r.index for r in results]
    assert len(set(indexes)) == want and all(0 <= i < count for i in indexes)
    keys = [(-r.score, r.index) for r in results]
    assert keys == sorted(keys), "not best first with ties by ascending index"
    for r in results:
        assert math.isfinite(r.score)
        assert r.id == docs[r.index].id
        assert r.text == (docs[r.index].text if request.return_documents else "")
        assert close(r.score, scores[r.index]), "Rerank and Score disagree on a pair"
    left_out = set(range(count)) - set(indexes)
    if results and left_out:  # top_n keeps the best: nothing left out scores above a result
        assert max(scores[i] for i in left_out) <= results[-1].score + SCORE_TOLERANCE
    assert response.model == served
    assert response.usage.input_tokens > 0 and response.usage.truncated_pairs <= count
    assert response.usage.batches >= 1


def check_score_response(request: pb.ScoreRequest, response: pb.ScoreResponse, served: str) -> None:
    assert len(response.scores) == len(request.pairs)
    assert all(math.isfinite(s) for s in response.scores)
    assert response.model == served
    assert response.usage.truncated_pairs <= len(request.pairs)


# --- the properties --------------------------------------------------------------------------


def assert_reached_both_paths(seen: Counter[str]) -> None:
    """The requests reached the scoring path and the refusals, not only one of them."""
    total = sum(seen.values())
    assert seen["OK"] >= 0.1 * total and seen["INVALID_ARGUMENT"] >= 1, seen
    assert seen["NOT_FOUND"] >= 1, seen  # at least the explicit example


UNKNOWN_MODEL = "no-such-model"


def test_fuzz_rerank(fuzz_server: tuple[RunningSidecar, grpc.Channel]) -> None:
    _, channel = fuzz_server
    served = served_name(fuzz_server)
    seen: Counter[str] = Counter()

    @fuzz_settings(70)
    @given(request=rerank_requests(served))
    @example(request=pb.RerankRequest(query="q", documents=[pb.Document()], model=UNKNOWN_MODEL))
    def check(request: pb.RerankRequest) -> None:
        code, response, details = invoke(
            channel, "Rerank", request.SerializeToString(), pb.RerankResponse
        )
        seen[code.name] += 1
        assert code in ALLOWED, f"{code.name}: {details}"
        assert code in expected_for_rerank(request, served), f"{code.name}: {details}"
        if code is OK:
            twin = pb.ScoreRequest(
                pairs=[pb.Pair(query=request.query, text=d.text) for d in request.documents],
                raw_scores=request.raw_scores,
                truncation=request.truncation,
                model=request.model,
            )
            score_code, scores, details = invoke(
                channel, "Score", twin.SerializeToString(), pb.ScoreResponse
            )
            assert score_code is OK, f"Score refused what Rerank took: {details}"
            check_rerank_response(request, response, served, list(scores.scores))

    check()
    assert_reached_both_paths(seen)


def test_fuzz_score(fuzz_server: tuple[RunningSidecar, grpc.Channel]) -> None:
    _, channel = fuzz_server
    served = served_name(fuzz_server)
    seen: Counter[str] = Counter()

    @fuzz_settings(40)
    @given(request=score_requests(served))
    @example(request=pb.ScoreRequest(pairs=[pb.Pair(query="q")], model=UNKNOWN_MODEL))
    def check(request: pb.ScoreRequest) -> None:
        code, response, details = invoke(
            channel, "Score", request.SerializeToString(), pb.ScoreResponse
        )
        seen[code.name] += 1
        assert code in ALLOWED, f"{code.name}: {details}"
        assert code in expected_for_score(request, served), f"{code.name}: {details}"
        if code is OK:
            check_score_response(request, response, served)

    check()
    assert_reached_both_paths(seen)


REQUEST_TYPES: dict[str, tuple[Any, Any]] = {
    "Rerank": (pb.RerankRequest, pb.RerankResponse),
    "Score": (pb.ScoreRequest, pb.ScoreResponse),
    "GetModelInfo": (pb.GetModelInfoRequest, pb.GetModelInfoResponse),
}


def expected_for_bytes(method: str, payload: bytes, served: str) -> set[Code]:
    """What the server must answer to ``payload``: as the client's protobuf parses it."""
    request_type, _ = REQUEST_TYPES[method]
    try:
        request = request_type.FromString(payload)
    except DecodeError:
        return {INVALID}
    if method == "Rerank":
        return expected_for_rerank(request, served)
    if method == "Score":
        return expected_for_score(request, served)
    return {OK} if request.model in ("", served) else {NOT_FOUND}


def _check_bytes(channel: grpc.Channel, method: str, payload: bytes, served: str) -> None:
    _, response_type = REQUEST_TYPES[method]
    code, _, details = invoke(channel, method, payload, response_type)
    assert code in ALLOWED, f"{method} {payload!r}: {code.name}: {details}"
    assert code in expected_for_bytes(method, payload, served), f"{code.name}: {details}"


def test_fuzz_raw_bytes(fuzz_server: tuple[RunningSidecar, grpc.Channel]) -> None:
    _, channel = fuzz_server
    served = served_name(fuzz_server)

    @fuzz_settings(40)
    @given(method=st.sampled_from(list(REQUEST_TYPES)), payload=st.binary(max_size=300))
    def check(method: str, payload: bytes) -> None:
        _check_bytes(channel, method, payload, served)

    check()


def test_fuzz_mutated_requests(fuzz_server: tuple[RunningSidecar, grpc.Channel]) -> None:
    """Valid encodings with bytes flipped, cut or inserted reach deeper than random bytes."""
    _, channel = fuzz_server
    served = served_name(fuzz_server)

    @fuzz_settings(50)
    @given(
        request=st.one_of(rerank_requests(served), score_requests(served)),
        data=st.data(),
    )
    def check(request: pb.RerankRequest | pb.ScoreRequest, data: st.DataObject) -> None:
        method = "Rerank" if isinstance(request, pb.RerankRequest) else "Score"
        payload = bytearray(request.SerializeToString())
        for _ in range(data.draw(st.integers(1, 4), label="mutations")):
            where = data.draw(st.integers(0, len(payload)), label="at")
            kind = data.draw(st.sampled_from(["flip", "cut", "insert"]), label="kind")
            if kind == "flip" and where < len(payload):
                payload[where] ^= data.draw(st.integers(1, 255), label="mask")
            elif kind == "cut":
                del payload[where : where + data.draw(st.integers(1, 8), label="length")]
            else:
                payload[where:where] = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
        _check_bytes(channel, method, bytes(payload), served)

    check()


def test_fuzzed_server_still_serves(fuzz_server: tuple[RunningSidecar, grpc.Channel]) -> None:
    _, channel = fuzz_server
    stub = rerank_pb2_grpc.RerankServiceStub(channel)
    request = pb.RerankRequest(query="list files", documents=[pb.Document(id="ls", text="ls")])
    assert [r.id for r in stub.Rerank(request, timeout=CALL_TIMEOUT).results] == ["ls"]
