"""Requests within the limits cost work bounded by what the model reads.

A 64 KiB query paired with 1,000 empty documents, or documents of hundreds of kilobytes without
a single ASCII space, used to be tokenized whole for every pair: one such call ran for tens of
seconds, grew the server by gigabytes, and held the tokenizer while other callers waited. Here
the real server (a subprocess, so its memory can be read) answers them while a one-document
call sent meanwhile waits only for the batches ahead of it. A burst of calls each as large as
the limits allow, or calls whose answers the client never reads, hold memory only up to the
bound on request bytes of calls not yet over.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.process import ServerProcess, free_port, start_server
from rerankd_server.servicer import SERVICE_NAME as SERVICE
from rerankd_server.settings import CALL_BYTES
from support.metrics import scrape
from support.wire import length_delimited

from .helpers import NeverReading

WORDS = "list the files of a directory with ls and find them by name".split()
QUERY = " ".join(WORDS[i % len(WORDS)] for i in range(20_000)).encode()[:65_536].decode()


def kilobytes(text: str, size: int = 500_000) -> str:
    """``text`` cut to ``size`` bytes of UTF-8 (the document limit is 512 KiB)."""
    return text.encode()[:size].decode(errors="ignore")


#: Texts of 500 KB that offer no ASCII space to cut at.
UNSPACED = {
    "CJK": kilobytes("文字列を検索する" * 30_000),
    "no-break spaces": kilobytes("\u00a0".join(WORDS * 12_000)),
    "carriage returns": kilobytes("\r".join(WORDS * 12_000)),
    "ideographic spaces": kilobytes("\u3000".join(WORDS * 12_000)),
}


def cpu_seconds(server: ServerProcess) -> float:
    """CPU time the server process has used, all its threads together: a cost that other
    processes on a loaded machine barely change, unlike wall-clock time."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(server: ServerProcess) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path]) -> Iterator[ServerProcess]:
    with start_server(tiny_models["modernbert"], "--max-batch-tokens", "4096") as running:
        yield running


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[rerank_pb2_grpc.RerankServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield rerank_pb2_grpc.RerankServiceStub(channel)


def one_document(stub: rerank_pb2_grpc.RerankServiceStub) -> float:
    started = time.perf_counter()
    stub.Rerank(pb.RerankRequest(query="list files", documents=[pb.Document(text="ls")]))
    return time.perf_counter() - started


def under_load(
    stub: rerank_pb2_grpc.RerankServiceStub, request: pb.RerankRequest, copies: int
) -> tuple[list[pb.RerankResponse], list[float]]:
    """Send ``copies`` of ``request`` at once; meanwhile, one-document calls, one after
    another, until they are answered. Returns the responses and the one-document latencies."""
    responses: list[pb.RerankResponse] = []
    threads = [
        threading.Thread(target=lambda: responses.append(stub.Rerank(request, timeout=300)))
        for _ in range(copies)
    ]
    for thread in threads:
        thread.start()
    latencies = []
    while any(thread.is_alive() for thread in threads) or not latencies:
        latencies.append(one_document(stub))
    for thread in threads:
        thread.join()
    return responses, latencies


def test_a_long_query_with_a_thousand_empty_documents(
    server: ServerProcess, stub: rerank_pb2_grpc.RerankServiceStub
) -> None:
    alone = statistics.median(one_document(stub) for _ in range(9))
    before = rss_mib(server)
    request = pb.RerankRequest(query=QUERY, documents=[pb.Document(text="")] * 1000)
    responses, latencies = under_load(stub, request, copies=2)
    assert [len(r.results) for r in responses] == [1000, 1000]
    assert all(r.usage.truncated_pairs == 1000 for r in responses)
    # Every pair reads at most the model's 128 tokens: the server holds no copy of the
    # query per pair (that took gigabytes) ...
    assert rss_mib(server) - before < 300
    # ... and a call sent meanwhile waits for at most the batches ahead of it (the one running
    # and the one prepared), not for the tokenizer: its time alone plus a few batch times.
    batch = max(r.usage.inference_time_us / r.usage.batches for r in responses) / 1e6
    assert statistics.median(latencies) < 5 * (alone + batch), (alone, batch, latencies)


def server_cost(
    server: ServerProcess, stub: rerank_pb2_grpc.RerankServiceStub, request: pb.RerankRequest
) -> float:
    """Median CPU seconds the server spends on ``request`` (three runs)."""

    def once() -> float:
        used = cpu_seconds(server)
        stub.Rerank(request, timeout=300)
        return cpu_seconds(server) - used

    return statistics.median(once() for _ in range(3))


@pytest.mark.parametrize("name", sorted(UNSPACED))
def test_long_documents_without_ascii_spaces(
    server: ServerProcess, stub: rerank_pb2_grpc.RerankServiceStub, name: str
) -> None:
    """They cost about what documents of the same size with spaces cost (the server's CPU
    time, measured side by side: both are cut to what the model reads before tokenizing)."""
    spaced = kilobytes(" ".join(WORDS * 12_000))
    cost = {
        kind: server_cost(
            server, stub, pb.RerankRequest(query="q", documents=[pb.Document(text=text)] * 12)
        )
        for kind, text in (("spaced", spaced), (name, UNSPACED[name]))
    }
    assert cost[name] < 4 * cost["spaced"] + 0.05, cost


def test_long_documents_in_chunks_cost_about_what_their_chunks_cost(
    server: ServerProcess, stub: rerank_pb2_grpc.RerankServiceStub
) -> None:
    """Twelve 500 KB documents in four chunks each cost the server about three times what the
    same documents unchunked cost (it scores four times the pairs): only what the chunks can
    cover is tokenized. Tokenized whole, they cost 57 times as much (3.4 s of CPU against
    0.06)."""
    documents = [pb.Document(text=kilobytes(" ".join(WORDS * 12_000)))] * 12
    plain = server_cost(server, stub, pb.RerankRequest(query="q", documents=documents))
    chunked = server_cost(
        server,
        stub,
        pb.RerankRequest(query="q", documents=documents, chunking=pb.Chunking(max_chunks=4)),
    )
    assert chunked < 8 * plain + 0.05, (chunked, plain)


def test_a_burst_of_the_largest_calls_holds_memory_to_the_byte_bound(
    tiny_models: dict[str, Path],
) -> None:
    """48 calls at once, each of 14 documents of 500 KB (7 MB, within every per-call limit):
    past --max-queue-bytes (here 16 MiB, two of them) the server refuses them as they come
    (RESOURCE_EXHAUSTED), so it grows by about the burst's bytes in transit. Unbounded, every
    call waited for the model holding its message and its texts: the same burst grew the
    server by nearly three times its bytes."""
    request = pb.RerankRequest(
        query="q", documents=[pb.Document(text=kilobytes(" ".join(WORDS * 8_000)))] * 14
    )
    burst_mib = 48 * request.ByteSize() / 2**20
    bound = str(16 * 2**20)
    with (
        start_server(
            tiny_models["modernbert"], "--max-batch-tokens", "4096", "--max-queue-bytes", bound
        ) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        assert len(stub.Rerank(request, timeout=300).results) == 14
        before = peak = rss_mib(server)
        futures = [stub.Rerank.future(request, timeout=300) for _ in range(48)]
        while not all(future.done() for future in futures):
            peak = max(peak, rss_mib(server))
            time.sleep(0.02)
        codes = [future.code() for future in futures]
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert peak - before < 2 * burst_mib, (peak - before, burst_mib)


EMPTY_ENTRIES = 3_900_000  # two bytes each: 7.8 MB, within the message limit


def empty_entries(method: str) -> bytes:
    """A request of millions of empty documents (pairs) for ``method``, built when asked for
    (megabytes each); a RerankStream item holds the Rerank one, with request_id "r"."""
    if method == "Score":
        return b"\x0a\x00" * EMPTY_ENTRIES
    rerank = b"\x0a\x01q" + b"\x12\x00" * EMPTY_ENTRIES
    return rerank if method == "Rerank" else b"\x0a\x01r" + length_delimited(2, rerank)


@pytest.mark.parametrize("method", ["Rerank", "RerankStream", "Score"])
def test_millions_of_empty_documents_are_refused_before_they_are_parsed(
    server: ServerProcess, method: str
) -> None:
    """Each entry would parse to an object of about 56 bytes: 220 MB for one call, held until
    the servicer could count them. They are counted on the wire instead."""
    before = rss_mib(server)
    with grpc.insecure_channel(server.target) as channel:
        if method == "RerankStream":
            call = channel.stream_stream(f"/{SERVICE}/{method}")
            replies = list(call(iter([empty_entries(method)]), timeout=60))
            item = pb.RerankStreamResponse.FromString(replies[0])
            code, message = grpc.StatusCode.INVALID_ARGUMENT.value[0], item.message
            assert (item.code, item.request_id) == (code, "r")
        else:
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(f"/{SERVICE}/{method}")(empty_entries(method), timeout=60)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            message = refused.value.details()
    assert message == "more than 1000 {} given; the limit is 1000".format(
        "pairs" if method == "Score" else "documents"
    )
    assert rss_mib(server) - before < 50


def two_calls_of_7_mb(tiny_models: dict[str, Path], metrics_port: int) -> ServerProcess:
    """The tiny model's server with the request-byte bound at 16 MiB (two calls of 7 MB) and
    metrics on ``metrics_port``."""
    flags = ["--max-batch-tokens", "4096", "--max-queue-bytes", str(16 * 2**20)]
    return start_server(tiny_models["modernbert"], *flags, "--metrics-port", str(metrics_port))


def test_answers_a_client_never_reads_hold_memory_to_the_byte_bound(
    tiny_models: dict[str, Path],
) -> None:
    """A call's bytes count until gRPC has ended the call, not until its handler returns: an
    answer with ``return_documents`` is as large as its request, and waits in gRPC until the
    client reads it. Counted only until the handler returned, 40 such calls of 7 MB that the
    client never read grew the server from 770 to 1,939 MiB, for as long as the connection
    lived."""
    request = pb.RerankRequest(
        query="q",
        documents=[pb.Document(text=kilobytes(" ".join(WORDS * 8_000)))] * 14,
        return_documents=True,
    ).SerializeToString()
    metrics = free_port()
    with (
        two_calls_of_7_mb(tiny_models, metrics) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        client = NeverReading(server.target)
        for _ in range(6):
            client.call("/rerankd.v1.RerankService/Rerank", request)
        end = time.monotonic() + 60
        while len(client.statuses) < 4 and time.monotonic() < end:
            client.read(timeout=0.1)
        # Two calls wait for the client with their answers, still holding their bytes; the
        # other four were refused (a status is headers, which the closed window lets through).
        assert sorted(client.statuses.values()) == ["8"] * 4  # RESOURCE_EXHAUSTED
        assert scrape(metrics)[("rerankd_queue_bytes", ())] == 2 * (CALL_BYTES + len(request))
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        one = pb.RerankRequest(query="list files", documents=[pb.Document(text="ls")])
        assert len(stub.Rerank(one, timeout=60).results) == 1  # small calls still fit
        client.socket.close()  # gRPC ends the two calls: their bytes come back
        while scrape(metrics)[("rerankd_queue_bytes", ())] and time.monotonic() < end:
            time.sleep(0.05)
        assert scrape(metrics)[("rerankd_queue_bytes", ())] == 0


def test_small_calls_a_client_never_reads_are_bounded_by_their_count(
    tiny_models: dict[str, Path],
) -> None:
    """Each call counts ``CALL_BYTES`` besides its request: what gRPC and the handler hold for
    it. Counted by their request bytes alone, 20,000 one-document calls on one connection whose
    client never read an answer held 22.5 KiB each, 440 MiB, far under the bound's 512 MiB of
    request bytes, and more calls would have held more. Here the bound is 8 MiB: 341 calls fit."""
    request = pb.RerankRequest(query="list files", documents=[pb.Document(text="ls")])
    wire = request.SerializeToString()
    bound = 8 * 2**20
    fit = bound // (CALL_BYTES + len(wire))
    metrics = free_port()
    flags = ["--max-queue-bytes", str(bound), "--max-message-bytes", str(2**20)]
    with start_server(tiny_models["modernbert"], *flags, "--metrics-port", str(metrics)) as server:
        client = NeverReading(server.target)
        for _ in range(1000):
            client.call("/rerankd.v1.RerankService/Rerank", wire)
        end = time.monotonic() + 60
        while len(client.statuses) < 1000 - fit and time.monotonic() < end:
            client.read(timeout=0.1)
        assert sorted(client.statuses.values()) == ["8"] * (1000 - fit)  # RESOURCE_EXHAUSTED
        assert scrape(metrics)[("rerankd_queue_bytes", ())] == fit * (CALL_BYTES + len(wire))
        client.socket.close()
        while scrape(metrics)[("rerankd_queue_bytes", ())] and time.monotonic() < end:
            time.sleep(0.05)
        assert scrape(metrics)[("rerankd_queue_bytes", ())] == 0
        with grpc.insecure_channel(server.target) as channel:
            stub = rerank_pb2_grpc.RerankServiceStub(channel)
            assert len(stub.Rerank(request, timeout=60).results) == 1


def test_stream_answers_a_client_never_reads_hold_memory_to_the_byte_bound(
    tiny_models: dict[str, Path],
) -> None:
    """A RerankStream item's bytes count until its answer is written: three items of 7 MB with
    ``return_documents`` on a stream whose client reads nothing, the bound at two. Counted only
    until each was answered, the stream's unwritten answers were bounded by its permits alone
    (eight a stream), and a client opening many streams held as many."""
    inner = pb.RerankRequest(
        query="q",
        documents=[pb.Document(text=kilobytes(" ".join(WORDS * 8_000)))] * 14,
        return_documents=True,
    )
    items = [
        pb.RerankStreamRequest(request_id=str(i), request=inner).SerializeToString()
        for i in range(3)
    ]
    metrics = free_port()
    with (
        two_calls_of_7_mb(tiny_models, metrics) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        client = NeverReading(server.target)
        client.call("/rerankd.v1.RerankService/RerankStream", *items)

        def held() -> float:
            return scrape(metrics)[("rerankd_queue_bytes", ())]

        end = time.monotonic() + 60
        answers = CALL_BYTES + 2 * len(items[0])  # the stream itself, two items' bytes
        while held() < answers and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.5)  # the third item is read and refused meanwhile
        assert held() == answers  # two answers wait for the client
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Rerank(inner, timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        client.socket.close()  # the stream ends: its unwritten answers' bytes come back
        while held() and time.monotonic() < end:
            time.sleep(0.05)
        assert held() == 0
        inner.return_documents = False  # (an answer this large passes gRPC's 4 MiB default)
        assert len(stub.Rerank(inner, timeout=60).results) == 14
