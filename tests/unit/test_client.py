"""rerankd.Client and rerankd.AsyncClient against a fake server on loopback.

Most tests run both clients through ``call``: the sync one directly, the async one in a
fresh event loop, so the two are held to the same behaviour by the same assertions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pickle
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from fake_server import INFO, MODEL, Certificates, FakeServer, make_certificates

import rerankd
from rerankd import (
    AsyncClient,
    BatchingLimits,
    Client,
    Document,
    ModelInfo,
    RequestLimits,
    Reranked,
    RerankResult,
    Scored,
    Usage,
)
from rerankd.v1 import rerank_pb2 as pb

KINDS = ["sync", "async"]


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as fake:
        yield fake


def call(kind: str, target: str, method: str, *args: Any, client: Any = None, **kwargs: Any) -> Any:
    """Run ``method(*args, **kwargs)`` on a new Client or AsyncClient built with ``client``."""
    options = client or {}
    if kind == "sync":
        with Client(target, **options) as sync_client:
            return getattr(sync_client, method)(*args, **kwargs)

    async def run() -> Any:
        async with AsyncClient(target, **options) as async_client:
            return await getattr(async_client, method)(*args, **kwargs)

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("result_type", "message"),
    [(RerankResult, pb.RerankResult), (Usage, pb.Usage), (rerankd.ChunkInfo, pb.ChunkInfo)],
)
def test_result_types_mirror_their_messages_field_for_field(result_type: Any, message: Any) -> None:
    """The client copies these by field name; a field added on one side only would be lost
    or fail the conversion."""
    fields = [f.name for f in dataclasses.fields(result_type)]
    assert fields == [f.name for f in message.DESCRIPTOR.fields]


@pytest.mark.parametrize("kind", KINDS)
def test_rerank_returns_results_best_first_with_usage(server: FakeServer, kind: str) -> None:
    reranked = call(kind, server.target, "rerank", "q", ["a", "ccc", "bb"])
    assert reranked == Reranked(
        results=[
            RerankResult(index=1, id="", score=3.0, text=""),
            RerankResult(index=2, id="", score=2.0, text=""),
            RerankResult(index=0, id="", score=1.0, text=""),
        ],
        model=MODEL,
        usage=Usage(
            input_tokens=6, truncated_pairs=0, queue_time_us=7, inference_time_us=11, batches=1
        ),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_documents_may_be_str_document_or_id_text_tuple(server: FakeServer, kind: str) -> None:
    documents = ["x", Document("yy", id="d2"), ("d3", "zzz")]
    reranked = call(kind, server.target, "rerank", "q", documents)
    [request] = server.servicer.requests
    assert [(d.id, d.text) for d in request.documents] == [("", "x"), ("d2", "yy"), ("d3", "zzz")]
    assert [(r.index, r.id) for r in reranked.results] == [(2, "d3"), (1, "d2"), (0, "")]


@pytest.mark.parametrize("kind", KINDS)
def test_rerank_options_reach_the_server(server: FakeServer, kind: str) -> None:
    reranked = call(
        kind,
        server.target,
        "rerank",
        "the query",
        ["a", "ccc", "bb"],
        top_n=2,
        return_documents=True,
        raw_scores=True,
        truncation="none",
        model="other",
    )
    [request] = server.servicer.requests
    assert request == pb.RerankRequest(
        query="the query",
        documents=[pb.Document(text=t) for t in ["a", "ccc", "bb"]],
        top_n=2,
        return_documents=True,
        raw_scores=True,
        truncation=pb.TRUNCATION_NONE,
        model="other",
    )
    assert [r.text for r in reranked.results] == ["ccc", "bb"]
    assert reranked.model == "other"


@pytest.mark.parametrize(
    ("truncation", "wire"),
    [
        ("default", pb.TRUNCATION_UNSPECIFIED),
        ("end", pb.TRUNCATION_END),
        ("start", pb.TRUNCATION_START),
        ("none", pb.TRUNCATION_NONE),
    ],
)
def test_truncation_maps_to_the_wire_enum(server: FakeServer, truncation: str, wire: int) -> None:
    with Client(server.target) as client:
        client.rerank("q", ["a"], truncation=truncation)  # type: ignore[arg-type]
        client.score([("q", "a")], truncation=truncation)  # type: ignore[arg-type]
    assert [r.truncation for r in server.servicer.requests] == [wire, wire]
    assert set(rerankd.TRUNCATIONS) == {"default", "end", "start", "none"}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"documents": ["a"], "truncation": "middle"}, ValueError),
        ({"documents": ["a"], "top_n": -1}, ValueError),
        ({"documents": "not a list"}, TypeError),
        ({"documents": [3]}, TypeError),
        ({"documents": [("id", "text", "extra")]}, TypeError),
    ],
)
def test_bad_arguments_fail_before_any_call(
    server: FakeServer, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with Client(server.target) as client, pytest.raises(error):
        client.rerank("q", **kwargs)
    assert server.servicer.calls == 0


@pytest.mark.parametrize("kind", KINDS)
def test_score_returns_scores_in_request_order(server: FakeServer, kind: str) -> None:
    scored = call(
        kind, server.target, "score", [("q1", "aaa"), ("q2", "b")], raw_scores=True, model="m"
    )
    assert scored == Scored(scores=[3.0, 1.0], model="m", usage=Usage(0, 0, 7, 11, 1))
    [request] = server.servicer.requests
    assert [(p.query, p.text) for p in request.pairs] == [("q1", "aaa"), ("q2", "b")]
    assert request.raw_scores
    with pytest.raises(TypeError):
        Client(server.target).score("qq")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_model_info_flattens_the_response(server: FakeServer, kind: str) -> None:
    info = call(kind, server.target, "model_info", "wanted")
    assert info == ModelInfo(
        name=MODEL,
        max_input_tokens=512,
        activation="torch.nn.Sigmoid",
        dtype="float32",
        device="cpu",
        attention_implementation="sdpa",
        batching=BatchingLimits(
            max_batch_tokens=16384,
            max_batch_size=64,
            padded_batches=True,
            max_queue_pairs=4096,
            max_queue_tokens=1 << 33,
        ),
        limits=RequestLimits(
            max_documents=1000,
            max_query_bytes=65536,
            max_document_bytes=524288,
            max_message_bytes=64 << 20,
        ),
        server_version=INFO.server_version,
        modules="Transformer(ModernBertModel) > Pooling(cls) > Dense(GELU) > LayerNorm > Dense",
    )
    assert server.servicer.requests == [pb.GetModelInfoRequest(model="wanted")]


STATUSES = [
    ("INVALID_ARGUMENT", rerankd.InvalidArgument),
    ("NOT_FOUND", rerankd.NotFound),
    ("RESOURCE_EXHAUSTED", rerankd.ResourceExhausted),
    ("UNAVAILABLE", rerankd.Unavailable),
    ("DEADLINE_EXCEEDED", rerankd.DeadlineExceeded),
    ("UNAUTHENTICATED", rerankd.Unauthenticated),
    ("PERMISSION_DENIED", rerankd.PermissionDenied),
    ("INTERNAL", rerankd.Internal),
    ("ABORTED", rerankd.RerankdError),
    ("UNIMPLEMENTED", rerankd.RerankdError),
]
NO_RETRY: dict[str, Any] = {"options": [("grpc.enable_retries", 0)]}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("name", "error"), STATUSES)
def test_each_status_raises_its_error(
    server: FakeServer, kind: str, name: str, error: type[rerankd.RerankdError]
) -> None:
    with pytest.raises(rerankd.RerankdError) as caught:
        call(kind, server.target, "rerank", f"status:{name}", ["a"], client=NO_RETRY)
    assert type(caught.value) is error
    assert caught.value.code == grpc.StatusCode[name]
    assert caught.value.details == f"fake {name}"
    assert str(caught.value) == f"{name}: fake {name}"
    assert isinstance(caught.value.__cause__, grpc.RpcError)


def test_errors_map_for_every_method_and_survive_pickling(server: FakeServer) -> None:
    with Client(server.target) as client:
        with pytest.raises(rerankd.NotFound) as not_found:
            client.model_info("status:NOT_FOUND")
        with pytest.raises(rerankd.InvalidArgument):
            client.score([("status:INVALID_ARGUMENT", "a")])
    copy = pickle.loads(pickle.dumps(not_found.value))
    assert (type(copy), copy.code, copy.details) == (rerankd.NotFound, *not_found.value.args)


def test_a_bare_rpc_error_becomes_unknown() -> None:
    error = rerankd.from_rpc_error(grpc.RpcError("broken"))
    assert type(error) is rerankd.RerankdError
    assert (error.code, error.details) == (grpc.StatusCode.UNKNOWN, "broken")


@pytest.mark.parametrize("kind", KINDS)
def test_the_client_deadline_becomes_deadline_exceeded(server: FakeServer, kind: str) -> None:
    started = time.monotonic()
    with pytest.raises(rerankd.DeadlineExceeded):
        call(kind, server.target, "rerank", "sleep:5", ["a"], client={"timeout": 0.2})
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_call_timeout_overrides_the_client_default(server: FakeServer, kind: str) -> None:
    short_default = {"timeout": 0.05}
    call(kind, server.target, "rerank", "sleep:0.2", ["a"], client=short_default, timeout=5)
    with pytest.raises(rerankd.DeadlineExceeded):
        call(kind, server.target, "score", [("sleep:5", "a")], client={"timeout": 30}, timeout=0.1)
    remaining = server.servicer.time_remaining[0]
    assert remaining is not None and 1 < remaining < 5.5  # the call's 5 s, not the client's 0.05 s


def test_no_timeout_sends_no_deadline(server: FakeServer) -> None:
    with Client(server.target, timeout=None) as client:
        client.rerank("q", ["a"])
    with Client(server.target) as client:
        client.rerank("q", ["a"])
    no_deadline, default = server.servicer.time_remaining
    assert no_deadline is None or no_deadline > 1e6
    assert default is not None and 25 < default < 31


@pytest.mark.parametrize("kind", KINDS)
def test_unavailable_is_retried_until_it_succeeds(server: FakeServer, kind: str) -> None:
    server.servicer.unavailable_first = 2
    reranked = call(kind, server.target, "rerank", "q", ["a"])
    assert reranked.results[0].score == 1.0
    assert server.servicer.calls == 3


def test_retries_stop_after_four_attempts(server: FakeServer) -> None:
    server.servicer.unavailable_first = 10
    with Client(server.target) as client, pytest.raises(rerankd.Unavailable, match="warming up"):
        client.model_info()
    assert server.servicer.calls == 4


def test_options_override_the_default_service_config(server: FakeServer) -> None:
    server.servicer.unavailable_first = 1
    no_retry = json.dumps({"methodConfig": [{"name": [{"service": "rerankd.v1.RerankService"}]}]})
    with (
        Client(server.target, options=[("grpc.service_config", no_retry)]) as client,
        pytest.raises(rerankd.Unavailable),
    ):
        client.rerank("q", ["a"])
    assert server.servicer.calls == 1


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_is_sent_with_every_call(server: FakeServer, kind: str) -> None:
    client = {"metadata": [("authorization", "Bearer t0k3n")]}
    call(kind, server.target, "rerank", "q", ["a"], client=client)
    assert server.servicer.metadata[0]["authorization"] == "Bearer t0k3n"


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_past_its_deadline_is_deadline_exceeded(server: FakeServer, kind: str) -> None:
    """Also while its requests are still being written: there grpc.aio reports the failed
    write, INTERNAL "Internal error from Core", instead of the deadline."""
    items = [(str(i), "q", ["x" * 60_000]) for i in range(100)]  # more than flow control lets by

    async def consume() -> None:
        async with AsyncClient(server.target) as client:
            async for _ in client.rerank_stream(items, timeout=0.3):
                pass

    with pytest.raises(rerankd.DeadlineExceeded):
        if kind == "sync":
            with Client(server.target) as client:
                list(client.rerank_stream(items, timeout=0.3))
        else:
            asyncio.run(consume())


def test_an_unreachable_server_is_unavailable() -> None:
    with FakeServer() as gone:
        target = gone.target
    with Client(target, **NO_RETRY) as client, pytest.raises(rerankd.Unavailable):
        client.rerank("q", ["a"], timeout=5)


def test_close_is_idempotent(server: FakeServer) -> None:
    client = Client(server.target)
    client.close()
    client.close()


async def test_async_client_in_a_running_loop(server: FakeServer) -> None:
    async with AsyncClient(server.target) as client:
        reranked, scored = await asyncio.gather(
            client.rerank("q", ["a", "bb"], top_n=1), client.score([("q", "ccc")])
        )
        with pytest.raises(rerankd.NotFound):
            await client.model_info("status:NOT_FOUND")
    await client.aclose()
    assert reranked.results == [RerankResult(index=1, id="", score=2.0, text="")]
    assert scored.scores == [3.0]


def test_the_package_exports_the_public_api() -> None:
    assert rerankd.__version__
    for name in rerankd.__all__:
        assert hasattr(rerankd, name), name


# --- several targets, round-robin ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "target"),
    [
        ("localhost:50051", "localhost:50051"),
        ("dns:///rerankd-pool.search.svc:50051", "dns:///rerankd-pool.search.svc:50051"),
        (["10.0.0.7:50051"], "10.0.0.7:50051"),
        (["10.0.0.7:50051", " 10.0.0.8:50052 "], "ipv4:10.0.0.7:50051,10.0.0.8:50052"),
        (["localhost:1", "127.0.0.2:2"], "ipv4:127.0.0.1:1,127.0.0.2:2"),
        (["[::1]:1", "[fd00::2]:2"], "ipv6:[::1]:1,[fd00::2]:2"),
        (("127.0.0.1:1", "127.0.0.1:2"), "ipv4:127.0.0.1:1,127.0.0.1:2"),
    ],
)
def test_targets_become_one_grpc_target(given: rerankd.Targets, target: str) -> None:
    assert rerankd.channel_target(given) == target
    with Client(given) as client:
        assert client.target == target


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ([], "at least one"),
        ("  ", "empty"),
        ("127.0.0.1:1,127.0.0.1:2", "as a list"),
        (["127.0.0.1:1", ""], "at least one"),
        (["127.0.0.1:1", "[::1]:2"], "mix IPv4 and IPv6"),
        (["127.0.0.1:1", "dns:///x:2"], "scheme"),
        (["127.0.0.1:1", "127.0.0.1"], "not host:port"),
        (["127.0.0.1:1", "127.0.0.1:http"], "not host:port"),
        (["127.0.0.1:1", "127.0.0.1:70000"], "not host:port"),
        (["127.0.0.1:1", "no-such-host.invalid:2"], "cannot resolve"),
    ],
)
def test_unusable_targets_fail_before_any_call(given: rerankd.Targets, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Client(given)


@pytest.fixture
def servers() -> Iterator[list[FakeServer]]:
    with FakeServer() as one, FakeServer() as two, FakeServer() as three:
        yield [one, two, three]


def _calls_until_all_connected(client: Client, servers: list[FakeServer]) -> None:
    """Round-robin picks only connected replicas: call until each has answered once."""
    deadline = time.monotonic() + 10
    while not all(s.servicer.calls for s in servers):
        assert time.monotonic() < deadline, [s.servicer.calls for s in servers]
        client.rerank("q", ["a"])
    for fake in servers:
        fake.servicer.requests.clear()


def test_calls_are_balanced_round_robin_over_a_list(servers: list[FakeServer]) -> None:
    with Client([s.target for s in servers]) as client:
        _calls_until_all_connected(client, servers)
        for _ in range(30):
            client.rerank("q", ["a"])
    counts = [s.servicer.calls for s in servers]
    assert sum(counts) == 30
    assert all(8 <= count <= 12 for count in counts), counts  # 10 each, give or take a re-pick


async def test_the_async_client_balances_too(servers: list[FakeServer]) -> None:
    ports = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    async with AsyncClient(f"ipv4:{ports}") as client:
        deadline = time.monotonic() + 10
        while not all(s.servicer.calls for s in servers):
            assert time.monotonic() < deadline
            await client.score([("q", "a")])
        await asyncio.gather(*(client.score([("q", "a")]) for _ in range(30)))
    assert all(s.servicer.calls > 1 for s in servers), [s.servicer.calls for s in servers]


def test_a_dns_target_reaches_the_server(server: FakeServer) -> None:
    with Client(f"dns:///localhost:{server.port}") as client:
        assert client.rerank("q", ["a"]).model == MODEL


def test_a_stopped_replica_is_skipped_without_failed_calls(servers: list[FakeServer]) -> None:
    with Client([s.target for s in servers]) as client:
        _calls_until_all_connected(client, servers)
        servers[1].__exit__(None, None, None)  # stopping twice (at fixture teardown) is harmless
        for _ in range(20):
            client.rerank("q", ["a"], timeout=5)
    assert servers[0].servicer.calls + servers[2].servicer.calls == 20
    assert servers[0].servicer.calls >= 5 and servers[2].servicer.calls >= 5


def test_calls_in_flight_on_a_replica_that_dies_are_retried_on_another(
    servers: list[FakeServer],
) -> None:
    """The retry covers calls already sent, as long as the dying replica sent no response
    headers yet (gRPC commits a call once headers arrive; a server must not send them early)."""
    with Client([s.target for s in servers[:2]]) as client:
        _calls_until_all_connected(client, servers[:2])
        servers[0].servicer.hang = True  # its calls end only when it dies, however late
        with ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(client.rerank, "q", ["a"]) for _ in range(4)]
            deadline = time.monotonic() + 5
            while servers[0].servicer.calls < 2:  # round-robin put two of them there
                assert time.monotonic() < deadline
                time.sleep(0.01)
            servers[0].__exit__(None, None, None)  # drops its connections, calls and all
            results = [call.result(timeout=10) for call in calls]
    assert [r.model for r in results] == [MODEL] * 4
    assert servers[1].servicer.calls == 4  # two of its own, two retried from the dead one


def test_unavailable_is_retried_on_another_replica(servers: list[FakeServer]) -> None:
    with Client([s.target for s in servers]) as client:
        _calls_until_all_connected(client, servers)
        for fake in servers:
            fake.servicer.unavailable_first = 1  # each replica fails its next call once
        for _ in range(6):
            client.rerank("q", ["a"])
    assert sum(s.servicer.calls for s in servers) == 6 + 3


# --- TLS, mTLS and tokens ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs() -> Certificates:
    return make_certificates()


@pytest.fixture
def tls_server(certs: Certificates) -> Iterator[FakeServer]:
    with FakeServer(certs.server_credentials()) as fake:
        yield fake


@pytest.fixture
def mtls_server(certs: Certificates) -> Iterator[FakeServer]:
    with FakeServer(certs.server_credentials(require_client_auth=True)) as fake:
        yield fake


@pytest.mark.parametrize("kind", KINDS)
def test_tls_with_a_ca_and_a_token(tls_server: FakeServer, certs: Certificates, kind: str) -> None:
    client = {"root_certificates": certs.ca, "token": "s3cret"}
    reranked = call(kind, tls_server.target, "rerank", "q", ["a"], client=client)
    assert reranked.model == MODEL
    assert tls_server.servicer.metadata[0]["authorization"] == "Bearer s3cret"


def test_tls_reads_pem_files_and_checks_the_server_name(
    tls_server: FakeServer, certs: Certificates, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(certs.ca)
    with Client(tls_server.target, root_certificates=ca, tls_server_name="rerankd.test") as client:
        client.rerank("q", ["a"])
    wrong_name = {**NO_RETRY, "root_certificates": ca, "tls_server_name": "other.test"}
    with Client(tls_server.target, **wrong_name) as client, pytest.raises(rerankd.Unavailable):
        client.rerank("q", ["a"], timeout=5)
    assert tls_server.servicer.calls == 1


@pytest.mark.parametrize(
    "client",
    [
        pytest.param({}, id="plaintext-to-tls"),
        pytest.param({"root_certificates": make_certificates("other CA").ca}, id="wrong-ca"),
    ],
)
def test_tls_fails_without_the_right_ca(tls_server: FakeServer, client: dict[str, Any]) -> None:
    with Client(tls_server.target, **client, **NO_RETRY) as c, pytest.raises(rerankd.Unavailable):
        c.rerank("q", ["a"], timeout=5)
    assert tls_server.servicer.calls == 0


@pytest.mark.parametrize("kind", KINDS)
def test_mtls_needs_the_client_certificate(
    mtls_server: FakeServer, certs: Certificates, kind: str
) -> None:
    server_only = {"root_certificates": certs.ca, **NO_RETRY}
    with pytest.raises(rerankd.Unavailable):
        call(kind, mtls_server.target, "rerank", "q", ["a"], client=server_only)
    mutual = {
        "root_certificates": certs.ca,
        "certificate_chain": certs.client_cert,
        "private_key": certs.client_key,
    }
    assert call(kind, mtls_server.target, "rerank", "q", ["a"], client=mutual).model == MODEL
    assert mtls_server.servicer.calls == 1


def test_ready_made_credentials_carry_the_token(
    tls_server: FakeServer, certs: Certificates
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=certs.ca)
    with Client(tls_server.target, credentials=credentials, token="t") as client:
        client.rerank("q", ["a"])
    assert tls_server.servicer.metadata[0]["authorization"] == "Bearer t"


@pytest.mark.parametrize("kind", KINDS)
def test_a_token_on_plaintext_is_plain_metadata(server: FakeServer, kind: str) -> None:
    call(
        kind,
        server.target,
        "rerank",
        "q",
        ["a"],
        client={"token": "plain", "metadata": [("x", "y")]},
    )
    assert server.servicer.metadata[0]["authorization"] == "Bearer plain"
    assert server.servicer.metadata[0]["x"] == "y"


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"token": " "}, ValueError, "token is empty"),
        ({"token": "t", "metadata": [("Authorization", "Bearer u")]}, ValueError, "not both"),
        (
            {"credentials": grpc.ssl_channel_credentials(), "tls": True},
            ValueError,
            "credentials= or the TLS options",
        ),
        ({"certificate_chain": b"PEM"}, ValueError, "both certificate_chain and private_key"),
        ({"private_key": b"PEM"}, ValueError, "both certificate_chain and private_key"),
        ({"tls_server_name": "x"}, ValueError, "needs TLS"),
        ({"root_certificates": "-----BEGIN CERTIFICATE-----"}, TypeError, "not str"),
    ],
)
def test_unusable_security_options_fail_at_construction(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Client("127.0.0.1:1", **options)


def test_an_unreadable_pem_file_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Client("127.0.0.1:1", root_certificates=tmp_path / "missing.pem")
