"""The ``rerankd`` command line against a fake server on loopback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from fake_server import INFO, MODEL, FakeServer
from google.protobuf.json_format import MessageToDict

from rerankd import cli
from rerankd.v1 import rerank_pb2 as pb

USAGE = {"queue_time_us": 7, "inference_time_us": 11, "batches": 1, "truncated_pairs": 0}


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
    expected |= {"limits": MessageToDict(INFO.limits, preserving_proto_field_name=True)}
    assert out == expected | {"server_version": INFO.server_version}


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
