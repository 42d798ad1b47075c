"""TLS, mutual TLS and bearer tokens, with certificates the tests make themselves.

Every server here serves the deterministic FakeScorer: these tests are about the transport and
the token interceptor, which do not depend on the model. Each channel gets its own subchannel
pool, so a connection made by one test (or with other credentials) is never reused by another.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.settings import Settings
from support.certs import CertificateAuthority, PemPair, TlsFiles, write_file, write_tls_files
from support.metrics import scrape
from support.sidecar import RunningSidecar, run_sidecar

from .helpers import (
    FAKE_MODEL,
    fake_factory,
    h2_call,
    new_token,
    requests_total,
    write_tokens,
)

Code = grpc.StatusCode
Metadata = Sequence[tuple[str, str]]

#: Own subchannel pool per channel: no connection is shared between channels of a test.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
#: Long enough for a handshake on a loaded CI machine, short enough that a refusal is quick.
TIMEOUT = 10.0

REQUEST = pb.RerankRequest(query="list files", documents=[pb.Document(id="ls", text="ls lists")])


def tls_channel(target: str, trusted_ca: bytes, client: PemPair | None = None) -> grpc.Channel:
    """A TLS channel trusting ``trusted_ca`` (PEM), presenting ``client``'s certificate if given."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trusted_ca,
        private_key=client.key_pem() if client else None,
        certificate_chain=client.cert_pem() if client else None,
    )
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


def plain_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


def rerank(channel: grpc.Channel, metadata: Metadata = ()) -> pb.RerankResponse:
    stub = rerank_pb2_grpc.RerankServiceStub(channel)
    response: pb.RerankResponse = stub.Rerank(REQUEST, metadata=metadata, timeout=TIMEOUT)
    return response


def refused(channel: grpc.Channel, metadata: Metadata = ()) -> grpc.RpcError:
    """The error of a Rerank call that must fail."""
    with pytest.raises(grpc.RpcError) as err:
        rerank(channel, metadata)
    return err.value


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def tls_settings(tls: TlsFiles, *, mutual: bool = False, **more: str) -> Settings:
    return Settings(
        model=FAKE_MODEL.model,
        warmup=False,
        tls_cert=str(tls.server.cert),
        tls_key=str(tls.server.key),
        tls_client_ca=str(tls.ca_cert) if mutual else "",
        **more,
    )


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningSidecar, TlsFiles]]:
    tls = write_tls_files(tmp_path_factory.mktemp("tls"))
    with run_sidecar(tls_settings(tls), fake_factory()) as running:
        yield running, tls


def test_tls_serves_a_client_that_trusts_its_ca(
    tls_server: tuple[RunningSidecar, TlsFiles],
) -> None:
    running, tls = tls_server
    with tls_channel(running.target, tls.ca_pem()) as channel:
        assert [r.id for r in rerank(channel).results] == ["ls"]


def test_tls_refuses_a_plaintext_client(tls_server: tuple[RunningSidecar, TlsFiles]) -> None:
    running, _ = tls_server
    with plain_channel(running.target) as channel:
        assert refused(channel).code() == Code.UNAVAILABLE


def test_client_trusting_another_ca_cannot_connect(
    tls_server: tuple[RunningSidecar, TlsFiles],
) -> None:
    running, _ = tls_server
    stranger = CertificateAuthority.create("some other CA")
    with tls_channel(running.target, stranger.cert_pem()) as channel:
        assert refused(channel).code() == Code.UNAVAILABLE


# --- mutual TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningSidecar, TlsFiles]]:
    tls = write_tls_files(tmp_path_factory.mktemp("mtls"))
    with run_sidecar(tls_settings(tls, mutual=True), fake_factory()) as running:
        yield running, tls


def test_mtls_serves_a_client_with_a_certificate_from_its_ca(
    mtls_server: tuple[RunningSidecar, TlsFiles],
) -> None:
    running, tls = mtls_server
    with tls_channel(running.target, tls.ca_pem(), client=tls.client) as channel:
        assert [r.id for r in rerank(channel).results] == ["ls"]


def test_mtls_refuses_a_client_without_a_certificate(
    mtls_server: tuple[RunningSidecar, TlsFiles],
) -> None:
    running, tls = mtls_server
    with tls_channel(running.target, tls.ca_pem()) as channel:
        assert refused(channel).code() == Code.UNAVAILABLE


def test_mtls_refuses_a_client_certificate_from_another_ca(
    mtls_server: tuple[RunningSidecar, TlsFiles], tmp_path: Path
) -> None:
    running, tls = mtls_server
    impostor = write_tls_files(tmp_path / "impostor")  # a client cert the server's CA never signed
    with tls_channel(running.target, tls.ca_pem(), client=impostor.client) as channel:
        assert refused(channel).code() == Code.UNAVAILABLE


def test_mtls_health_needs_a_client_certificate_too(
    mtls_server: tuple[RunningSidecar, TlsFiles],
) -> None:
    """Transport security covers every service, health included (unlike the token check)."""
    running, tls = mtls_server
    with tls_channel(running.target, tls.ca_pem()) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert err.value.code() == Code.UNAVAILABLE


# --- bearer tokens ---------------------------------------------------------------------------

TOKEN = new_token()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSidecar]:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    # Several tokens (any of them is accepted) and comments, one of them indented.
    write_tokens(path, new_token(), "  # indented comment", TOKEN)
    settings = Settings(model=FAKE_MODEL.model, warmup=False, auth_token_file=str(path))
    with run_sidecar(settings, fake_factory()) as running:
        yield running


REFUSED_HEADERS: dict[str, Metadata] = {
    "no metadata": (),
    "wrong token": bearer("rdk-not-the-token"),
    "token prefix": bearer(TOKEN[:-1]),
    "token with a suffix": bearer(TOKEN + "x"),
    "empty bearer": (("authorization", "Bearer "),),
    "scheme only": (("authorization", "Bearer"),),
    "token without scheme": (("authorization", TOKEN),),
    "basic scheme": (("authorization", f"Basic {TOKEN}"),),
    "other header": (("x-api-key", TOKEN),),
    "comment line as token": bearer("# rerankd test tokens"),
    "indented comment line as token": bearer("# indented comment"),
}


@pytest.mark.parametrize("case", list(REFUSED_HEADERS))
def test_token_missing_or_wrong_is_unauthenticated(token_server: RunningSidecar, case: str) -> None:
    with plain_channel(token_server.target) as channel:
        error = refused(channel, REFUSED_HEADERS[case])
    assert error.code() == Code.UNAUTHENTICATED
    assert TOKEN not in (error.details() or "")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_right_token_is_accepted_with_any_case_of_the_scheme(
    token_server: RunningSidecar, scheme: str
) -> None:
    with plain_channel(token_server.target) as channel:
        response = rerank(channel, (("authorization", f"{scheme} {TOKEN}"),))
    assert [r.id for r in response.results] == ["ls"]


def test_every_rerank_rpc_needs_the_token(token_server: RunningSidecar) -> None:
    with plain_channel(token_server.target) as channel:
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        calls = {
            "Score": lambda md: stub.Score(
                pb.ScoreRequest(pairs=[pb.Pair(query="q", text="t")]), metadata=md, timeout=TIMEOUT
            ),
            "GetModelInfo": lambda md: stub.GetModelInfo(
                pb.GetModelInfoRequest(), metadata=md, timeout=TIMEOUT
            ),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as err:
                call(())
            assert err.value.code() == Code.UNAUTHENTICATED, name
            assert call(bearer(TOKEN)) is not None, name


def test_health_and_reflection_need_no_token(token_server: RunningSidecar) -> None:
    with plain_channel(token_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rerankd.v1.RerankService", "rerankd.v1.Liveness"):
            request = health_pb2.HealthCheckRequest(service=service)
            status = health.Check(request, timeout=TIMEOUT).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert "rerankd.v1.RerankService" in services


def test_token_file_rotation_takes_effect_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    old, new = new_token(), new_token()
    assert len(old) == len(new)  # same file size: only the mtime tells the change
    write_tokens(path, old)
    settings = Settings(model=FAKE_MODEL.model, warmup=False, auth_token_file=str(path))
    with run_sidecar(settings, fake_factory()) as running, plain_channel(running.target) as channel:
        assert rerank(channel, bearer(old)).results
        assert refused(channel, bearer(new)).code() == Code.UNAUTHENTICATED
        before = path.stat().st_mtime
        write_tokens(path, new)
        later = max(time.time(), before) + 2  # mtime moves on even on coarse-timestamp filesystems
        os.utime(path, (later, later))
        assert refused(channel, bearer(old)).code() == Code.UNAUTHENTICATED
        assert rerank(channel, bearer(new)).results
        # An unreadable or empty file mid-rotation keeps the tokens in force, it never opens up.
        write_file(path, b"\n")
        assert refused(channel).code() == Code.UNAUTHENTICATED
        assert rerank(channel, bearer(new)).results


def test_tokens_never_appear_in_the_server_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    right, wrong = new_token(), new_token()
    path = tmp_path / "tokens"
    write_tokens(path, right)
    caplog.set_level(logging.DEBUG)
    settings = Settings(model=FAKE_MODEL.model, warmup=False, auth_token_file=str(path))
    with run_sidecar(settings, fake_factory()) as running, plain_channel(running.target) as channel:
        assert refused(channel, bearer(wrong)).code() == Code.UNAUTHENTICATED
        assert rerank(channel, bearer(right)).results
        invalid = pb.RerankRequest(query="", documents=REQUEST.documents)  # logged with its reason
        with pytest.raises(grpc.RpcError):
            rerank_pb2_grpc.RerankServiceStub(channel).Rerank(
                invalid, metadata=bearer(right), timeout=TIMEOUT
            )
        rotated = new_token()
        write_tokens(path, rotated)  # the reload path logs nothing secret either
        assert refused(channel, bearer(right)).code() == Code.UNAUTHENTICATED
    messages = [record.getMessage() for record in caplog.records]
    assert any("Rerank OK" in m for m in messages), "no request log captured: the test is blind"
    assert any("INVALID_ARGUMENT" in m for m in messages)
    everything = caplog.text + "\n".join(repr(vars(record)) for record in caplog.records)
    for token in (right, wrong, rotated):
        assert token not in everything


# --- certificate rotation --------------------------------------------------------------------


def test_certificate_rotation_to_a_new_ca_without_restart(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    with (
        run_sidecar(tls_settings(tls_files), fake_factory()) as running,
        tls_channel(running.target, tls_files.ca_pem()) as before,
    ):
        assert rerank(before).results
        new_ca = CertificateAuthority.create("rotated CA")
        rotated = new_ca.issue_server()
        # Key first, then certificate, as a careless rotation script might: the server re-reads
        # the pair when it next shakes hands.
        write_file(tls_files.server.key, rotated.key_pem(), mode=0o600)
        write_file(tls_files.server.cert, rotated.cert_pem())
        with tls_channel(running.target, new_ca.cert_pem()) as trusting_new:
            assert rerank(trusting_new).results
        with tls_channel(running.target, tls_files.ca_pem()) as trusting_old:
            assert refused(trusting_old).code() == Code.UNAVAILABLE
        # The connection made before the rotation is not cut: in-flight traffic continues.
        assert rerank(before).results


def test_broken_certificate_files_keep_the_current_ones(tls_files: TlsFiles) -> None:
    """A half-written secret must not take the server down: it keeps serving the old pair."""
    with run_sidecar(tls_settings(tls_files), fake_factory()) as running:
        write_file(tls_files.server.cert, b"-----BEGIN CERTIFICATE-----\ntruncated")
        with tls_channel(running.target, tls_files.ca_pem()) as channel:
            assert rerank(channel).results
        # ... and picks up the finished rotation once the files are whole again.
        new_ca = CertificateAuthority.create("after the broken write")
        new_ca.issue_server().write(tls_files.server.cert.parent, "server")
        with tls_channel(running.target, new_ca.cert_pem()) as channel:
            assert rerank(channel).results


# --- TLS and tokens together -----------------------------------------------------------------


def test_mtls_and_token_together(tls_files: TlsFiles, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    write_tokens(path, TOKEN)
    settings = tls_settings(tls_files, mutual=True, auth_token_file=str(path))
    with run_sidecar(settings, fake_factory()) as running:
        with tls_channel(running.target, tls_files.ca_pem(), client=tls_files.client) as channel:
            assert refused(channel).code() == Code.UNAUTHENTICATED
            assert refused(channel, bearer("rdk-wrong")).code() == Code.UNAUTHENTICATED
            assert rerank(channel, bearer(TOKEN)).results
        # The idiomatic client: the token as call credentials, sent only over TLS.
        credentials = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(
                tls_files.ca_pem(), tls_files.client.key_pem(), tls_files.client.cert_pem()
            ),
            grpc.access_token_call_credentials(TOKEN),
        )
        with grpc.secure_channel(running.target, credentials, options=CHANNEL_OPTIONS) as channel:
            assert rerank(channel).results
        # A right token does not replace the client certificate.
        with tls_channel(running.target, tls_files.ca_pem()) as channel:
            assert refused(channel, bearer(TOKEN)).code() == Code.UNAVAILABLE


def test_unauthenticated_calls_are_counted_and_tagged(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    write_tokens(path, TOKEN)
    settings = Settings(model=FAKE_MODEL.model, warmup=False, auth_token_file=str(path))
    with (
        run_sidecar(settings, fake_factory(), metrics=True) as running,
        plain_channel(running.target) as channel,
    ):
        error = refused(channel, (("x-request-id", "no-token"),))
        assert error.code() == Code.UNAUTHENTICATED
        counted = requests_total(scrape(running.sidecar.metrics_port), "Rerank", "UNAUTHENTICATED")
    metadata = [*(error.initial_metadata() or ()), *(error.trailing_metadata() or ())]  # type: ignore[attr-defined]
    assert ("x-request-id", "no-token") in metadata
    assert counted == 1


def test_an_unauthenticated_call_with_an_id_that_cannot_be_sent_back_gets_a_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Over plain HTTP/2 (gRPC's clients refuse to send such ids): echoed, the newline failed
    the refusal itself in gRPC's core (INTERNAL "Invalid metadata") and forged a log line."""
    path = tmp_path / "tokens"
    write_tokens(path, TOKEN)
    settings = Settings(model=FAKE_MODEL.model, warmup=False, auth_token_file=str(path))
    caplog.set_level(logging.INFO, logger="rerankd_server")
    method = "/rerankd.v1.RerankService/Rerank"
    with run_sidecar(settings, fake_factory()) as running:
        answers = [
            h2_call(running.target, method, REQUEST.SerializeToString(), [("x-request-id", sent)])
            for sent in (b"a\nb INFO forged", "\u00e9".encode())
        ]
    for answer in answers:
        assert answer["grpc-status"] == str(Code.UNAUTHENTICATED.value[0]), answer
        echoed = answer["x-request-id"]
        assert len(echoed) >= 8 and echoed.isascii() and echoed.isprintable()
    assert answers[0]["x-request-id"] != answers[1]["x-request-id"]
    refusals = [r.getMessage() for r in caplog.records if "UNAUTHENTICATED" in r.getMessage()]
    assert len(refusals) == 2 and not any("\n" in m for m in refusals)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


SERVED_METHODS = {"Rerank", "Score", "GetModelInfo", "RerankStream"}


def test_unauthenticated_calls_to_made_up_methods_cannot_grow_the_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every refused call is counted, under a served method or ``unknown``: label values come
    from a fixed set, never from the path a stranger sends, and so do the log lines."""
    path = tmp_path / "tokens"
    write_tokens(path, TOKEN)
    settings = Settings(model=FAKE_MODEL.model, warmup=False, auth_token_file=str(path))
    calls = 2000
    paths = [
        f"/rerankd.v1.RerankService/Made{i}" if i % 2 else f"/made.up{i}.Service/Call{i}Stream"
        for i in range(calls - 1)
    ] + ["/rerankd.v1.RerankService/" + "x" * 4000]
    caplog.set_level(logging.INFO, logger="rerankd_server")
    with (
        run_sidecar(settings, fake_factory(), metrics=True) as running,
        plain_channel(running.target) as channel,
    ):
        for start in range(0, calls, 200):  # 200 calls in flight at a time
            batch = paths[start : start + 200]
            futures = [channel.unary_unary(p).future(b"", timeout=TIMEOUT) for p in batch]
            for future in futures:
                assert future.exception().code() == Code.UNAUTHENTICATED  # type: ignore[union-attr]
        refused(channel)  # a served method is still counted under its own name
        after = scrape(running.sidecar.metrics_port)
    series = {key for key in after if key[0].startswith("rerankd_request")}
    methods = {dict(labels).get("method") for _, labels in series}
    assert methods == {"unknown", "Rerank"}, sorted(methods - SERVED_METHODS)[:5]
    assert len(series) < 100, f"{len(series)} request series after {calls} refused calls"
    assert requests_total(after, "unknown", "UNAUTHENTICATED") == calls
    assert requests_total(after, "Rerank", "UNAUTHENTICATED") == 1
    longest = max(len(record.getMessage()) for record in caplog.records)
    assert longest < 300, f"a log line of {longest} characters"


def test_a_token_file_rewritten_with_a_non_utf8_byte_keeps_the_tokens_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    write_tokens(path, TOKEN)
    settings = Settings(model=FAKE_MODEL.model, warmup=False, auth_token_file=str(path))
    caplog.set_level(logging.WARNING, logger="rerankd_server")
    with run_sidecar(settings, fake_factory()) as running, plain_channel(running.target) as channel:
        assert rerank(channel, bearer(TOKEN)).results
        write_file(path, f"{new_token()}\n".encode() + b"caf\xe9\n")  # Latin-1, not UTF-8
        for _ in range(3):
            assert rerank(channel, bearer(TOKEN)).results
            assert refused(channel, bearer("rdk-wrong")).code() == Code.UNAUTHENTICATED
        rotated = new_token()
        write_tokens(path, rotated)  # a good file again is taken up
        assert rerank(channel, bearer(rotated)).results
        assert refused(channel, bearer(TOKEN)).code() == Code.UNAUTHENTICATED
    warnings = [r.getMessage() for r in caplog.records if "token file" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "can't decode byte 0xe9" in warnings[0] and "keeping the current tokens" in warnings[0]
