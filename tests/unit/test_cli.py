"""The ``rerankd`` command line against a fake server on loopback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_server import INFO, MODEL, Certificates, FakeServer, make_certificates
from google.protobuf.json_format import MessageToDict

from rerankd import cli, connection
from rerankd.v1 import rerank_pb2 as pb

USAGE = {
    "queue_time_us": 7,
    "inference_time_us": 11,
    "batches": 1,
    "truncated_pairs": 0,
    "cached_pairs": 0,
    "scored_pairs": 0,
}


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as fake:
        yield fake


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    """Run the CLI; return (exit status, stdout parsed as JSON or None, stderr)."""
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, json.loads(out) if out else None, err


def test_rerank_documents_from_arguments(server: FakeServer, capsys: Any) -> None:
    status, out, _ = run(capsys, "rerank", "--target", server.target, "--query", "q", "a", "ccc")
    assert status == 0
    assert out == {
        "model": MODEL,
        "results": [{"index": 1, "id": "", "score": 3.0}, {"index": 0, "id": "", "score": 1.0}],
        "usage": {"input_tokens": 4, **USAGE},
    }


def test_rerank_options_reach_the_server(server: FakeServer, capsys: Any) -> None:
    argv = ["rerank", "--target", server.target, "--query", "q", "--top-n", "1"]
    argv += ["--return-documents", "--raw-scores", "--truncation", "start", "--model", "m"]
    status, out, _ = run(capsys, *argv, "--", "bb", "-a")
    assert status == 0
    assert out["results"] == [{"index": 0, "id": "", "score": 2.0, "text": "bb"}]
    assert out["model"] == "m"
    [request] = server.servicer.requests
    assert (request.top_n, request.return_documents, request.raw_scores) == (1, True, True)
    assert (request.truncation, request.model) == (pb.TRUNCATION_START, "m")


def test_rerank_reads_json_lines_from_stdin(
    server: FakeServer, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('"a"\n\n  \n{"id": "d1", "text": "bbb"}\n'))
    status, out, _ = run(capsys, "rerank", "--target", server.target, "--query", "q")
    assert status == 0
    assert [(r["index"], r["id"]) for r in out["results"]] == [(1, "d1"), (0, "")]
    [request] = server.servicer.requests
    assert [(d.id, d.text) for d in request.documents] == [("", "a"), ("d1", "bbb")]


@pytest.mark.parametrize(
    "bad_line", ["{not json", "42", '{"id": "x"}', '{"id": 7, "text": "t"}', '["a"]']
)
def test_a_malformed_stdin_line_exits_2_naming_it(
    server: FakeServer, capsys: Any, monkeypatch: pytest.MonkeyPatch, bad_line: str
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f'"ok"\n\n{bad_line}\n"ok"\n'))
    status, out, err = run(capsys, "rerank", "--target", server.target, "--query", "q")
    assert (status, out) == (2, None)
    assert err.startswith("error: stdin line 3: ")
    assert server.servicer.calls == 0


def test_no_documents_at_all_exits_2(
    server: FakeServer, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    status, _, err = run(capsys, "score", "--target", server.target, "--query", "q")
    assert status == 2
    assert "no documents" in err


def test_score_from_arguments_and_stdin(
    server: FakeServer, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, out, _ = run(capsys, "score", "--target", server.target, "--query", "q", "aaa", "b")
    assert (status, out["model"], out["scores"]) == (0, MODEL, [3.0, 1.0])
    assert out["usage"] == {"input_tokens": 0, **USAGE}
    monkeypatch.setattr(sys, "stdin", io.StringIO('"cc"\n{"id": "ignored", "text": "d"}\n'))
    status, out, _ = run(capsys, "score", "--target", server.target, "--query", "q")
    assert (status, out["scores"]) == (0, [2.0, 1.0])
    assert [(p.query, p.text) for p in server.servicer.requests[1].pairs] == [
        ("q", "cc"),
        ("q", "d"),
    ]


def test_info_prints_the_model_info(server: FakeServer, capsys: Any) -> None:
    status, out, _ = run(capsys, "info", "--target", server.target)
    assert status == 0
    expected = MessageToDict(INFO.model, preserving_proto_field_name=True)
    expected["batching"]["max_queue_tokens"] = int(expected["batching"]["max_queue_tokens"])
    limits = MessageToDict(INFO.limits, preserving_proto_field_name=True)
    expected |= {"limits": {"max_stream_in_flight": 0, **limits}}
    assert out == expected | {"server_version": INFO.server_version, "served_models": []}


@pytest.mark.parametrize(
    "argv",
    [
        ["rerank", "--query", "status:INVALID_ARGUMENT", "a"],
        ["score", "--query", "status:INVALID_ARGUMENT", "a"],
        ["info", "--model", "status:INVALID_ARGUMENT"],
    ],
)
def test_a_server_error_exits_1(server: FakeServer, capsys: Any, argv: list[str]) -> None:
    status, out, err = run(capsys, *argv, "--target", server.target)
    assert (status, out) == (1, None)
    assert err == "error: INVALID_ARGUMENT: fake INVALID_ARGUMENT\n"


def test_a_deadline_exits_1(server: FakeServer, capsys: Any) -> None:
    argv = ["rerank", "--target", server.target, "--timeout", "0.1", "--query", "sleep:5", "a"]
    status, _, err = run(capsys, *argv)
    assert status == 1
    assert err.startswith("error: DEADLINE_EXCEEDED: ")


def test_target_and_token_come_from_the_environment(
    server: FakeServer, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RERANKD_TARGET", server.target)
    monkeypatch.setenv("RERANKD_TOKEN", "from-env")
    assert run(capsys, "info")[0] == 0
    assert run(capsys, "info", "--token", "from-flag")[0] == 0
    auth = [m["authorization"] for m in server.servicer.metadata]
    assert auth == ["Bearer from-env", "Bearer from-flag"]
    monkeypatch.delenv("RERANKD_TOKEN")
    assert run(capsys, "info")[0] == 0
    assert "authorization" not in server.servicer.metadata[2]


def test_unknown_arguments_are_usage_errors(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["info", "--bogus"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "module"),
    [("serve", "rerankd_server.app"), ("make-tiny-model", "rerankd_server.tiny_models")],
)
def test_server_commands_pass_every_argument_through(
    monkeypatch: pytest.MonkeyPatch, command: str, module: str
) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(main=fake_main))
    argv = ["--help", "--port", "5", "path", "--model=x", "-v", "--version", "-h", "--", "-x"]
    assert cli.main([command, *argv]) == 3
    assert seen == [argv]


@pytest.mark.parametrize("command", ["serve", "make-tiny-model"])
def test_server_commands_without_the_server_extra_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, command: str
) -> None:
    monkeypatch.setitem(sys.modules, "rerankd_server.app", None)
    monkeypatch.setitem(sys.modules, "rerankd_server.tiny_models", None)
    assert cli.main([command, "--help"]) == 2
    assert "pip install 'rerankd[server]'" in capsys.readouterr().err


def test_python_dash_m_rerankd_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rerankd", "--help"], capture_output=True, text=True, check=True
    )
    assert "rerank" in done.stdout
    assert "make-tiny-model" in done.stdout


def test_comma_separated_targets_become_a_balanced_client(
    capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeServer() as gone:
        dead = gone.target
    built: list[str] = []
    real_client = connection.Client

    def recording_client(*args: Any, **kwargs: Any) -> Any:
        client = real_client(*args, **kwargs)
        built.append(client.target)
        return client

    monkeypatch.setattr(connection, "Client", recording_client)
    with FakeServer() as alive:
        for _ in range(3):
            assert run(capsys, "info", "--target", f"{dead}, localhost:{alive.port}")[0] == 0
        assert alive.servicer.calls == 3  # the dead replica is skipped, not an error
    assert built == [f"ipv4:{dead},127.0.0.1:{alive.port}"] * 3


def test_a_scheme_target_is_not_split(server: FakeServer, capsys: Any) -> None:
    assert run(capsys, "info", "--target", f"ipv4:{server.target},{server.target}")[0] == 0
    assert server.servicer.calls == 1


@pytest.mark.parametrize(
    ("target", "message"),
    [("127.0.0.1:1,[::1]:2", "mix IPv4 and IPv6"), ("127.0.0.1:1,nope", "not host:port")],
)
def test_an_unusable_target_list_exits_2(capsys: Any, target: str, message: str) -> None:
    status, out, err = run(capsys, "info", "--target", target)
    assert (status, out) == (2, None)
    assert message in err


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    certs = make_certificates()
    folder = tmp_path_factory.mktemp("pem")
    files = {}
    for name in ("ca", "server_cert", "server_key", "client_cert", "client_key"):
        files[name] = folder / f"{name}.pem"
        files[name].write_bytes(getattr(certs, name))
    return files


@pytest.fixture
def mtls_server(pem_files: dict[str, Path]) -> Iterator[FakeServer]:
    certs = Certificates(**{name: path.read_bytes() for name, path in pem_files.items()})
    with FakeServer(certs.server_credentials(require_client_auth=True)) as fake:
        yield fake


def test_mtls_and_a_token_file_from_flags(
    mtls_server: FakeServer, pem_files: dict[str, Path], capsys: Any, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\nignored\n")
    argv = ["info", "--target", f"localhost:{mtls_server.port}", "--tls-ca", str(pem_files["ca"])]
    argv += ["--tls-cert", str(pem_files["client_cert"]), "--tls-key", str(pem_files["client_key"])]
    status, out, _ = run(capsys, *argv, "--token-file", str(token_file))
    assert (status, out["name"]) == (0, MODEL)
    assert mtls_server.servicer.metadata[0]["authorization"] == "Bearer file-token"


def test_a_token_file_in_the_servers_format_sends_its_first_token(
    server: FakeServer, capsys: Any, tmp_path: Path
) -> None:
    """One mounted file serves ``serve --auth-token-file`` and every client command."""
    token_file = tmp_path / "tokens"
    token_file.write_text("# rotated monthly\n\n  first-token  \nsecond-token\n")
    status, _, _ = run(capsys, "info", "--target", server.target, "--token-file", str(token_file))
    assert status == 0
    assert server.servicer.metadata[0]["authorization"] == "Bearer first-token"


def test_tls_options_come_from_the_environment(
    mtls_server: FakeServer,
    pem_files: dict[str, Path],
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RERANKD_TARGET", mtls_server.target)
    monkeypatch.setenv("RERANKD_TLS_CA", str(pem_files["ca"]))
    monkeypatch.setenv("RERANKD_TLS_SERVER_NAME", "rerankd.test")
    status, _, err = run(capsys, "info", "--timeout", "5")
    assert status == 1 and err.startswith("error: UNAVAILABLE: ")  # no client certificate yet
    monkeypatch.setenv("RERANKD_TLS_CERT", str(pem_files["client_cert"]))
    monkeypatch.setenv("RERANKD_TLS_KEY", str(pem_files["client_key"]))
    assert run(capsys, "info")[0] == 0
    assert mtls_server.servicer.calls == 1


def test_plaintext_to_a_tls_server_fails_and_tls_flag_needs_a_trusted_ca(
    mtls_server: FakeServer, capsys: Any
) -> None:
    for extra in ([], ["--tls"]):  # no TLS; TLS trusting only the system CAs
        status, _, err = run(
            capsys, "info", "--target", mtls_server.target, "--timeout", "5", *extra
        )
        assert status == 1 and err.startswith("error: UNAVAILABLE: ")
    assert mtls_server.servicer.calls == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-ca", "/nonexistent/ca.pem"], "cannot read /nonexistent/ca.pem"),
        (["--tls-cert", "/dev/null"], "both certificate_chain and private_key"),
        (["--token-file", "/dev/null"], "no token in it"),
        (["--tls-server-name", "x"], "needs TLS"),
    ],
)
def test_unusable_security_flags_exit_2(
    server: FakeServer, capsys: Any, flags: list[str], message: str
) -> None:
    status, out, err = run(capsys, "info", "--target", server.target, *flags)
    assert (status, out) == (2, None)
    assert message in err
    assert server.servicer.calls == 0


def test_a_reader_that_stops_early_is_no_traceback(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())  # as `rerankd info | head -1` leaves it
    assert cli.main(["info", "--target", server.target]) == 1
