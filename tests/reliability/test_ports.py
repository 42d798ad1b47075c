"""Start-up refusals: a port is never shared, and what cannot be had ends start-up in one line.

A second server on a port in use, a metrics port in use, a token file that cannot be used: each
ends ``python -m rerankd_server`` with exit code 2 and one line naming what is wrong, before any
model is loaded. ``/metrics`` (unauthenticated) listens where the gRPC port does unless told
otherwise.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.process import ServerProcess, ServerStartError, free_port, start_server
from rerankd_server.settings import Settings, parse_settings
from support.metrics import scrape
from support.sidecar import run_sidecar

from .helpers import FAKE_MODEL, fake_factory

#: Generous for a slow machine: the refusals come before any model is loaded, in seconds.
EXIT_TIMEOUT = 120.0


def serve_argv(model: str | Path) -> list[str]:
    return [sys.executable, "-m", "rerankd_server", "--model", str(model), "--host", "127.0.0.1"]


def refused_start(model: str | Path, *args: str) -> str:
    """Run ``rerankd serve`` that must refuse to start: assert exit code 2 and a single line of
    output; return that line."""
    argv = [*serve_argv(model), "--port", "0", *args]  # a later --port wins
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=EXIT_TIMEOUT, env=env, check=False
    )
    output = done.stdout + done.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert done.returncode == 2, f"exit code {done.returncode}. Output:\n{output}"
    assert len(lines) == 1, f"not one line:\n{output}"
    return lines[0]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another program listens on (a plain socket, no SO_REUSEPORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def model_on_a_fresh_connection(target: str) -> str:
    """The default model's name as a new TCP connection to ``target`` sees it."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        try:
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        except grpc.RpcError as err:  # e.g. UNAVAILABLE from a server still loading its model
            return f"<{err.code().name}>"
    return str(info.model.name)


def test_a_second_server_on_a_port_in_use_exits_2_and_never_serves(
    tiny_models: dict[str, Path],
) -> None:
    """grpc turns SO_REUSEPORT on by default: a second server on the same port would start and
    the kernel would hand it half of the new connections."""
    with start_server(tiny_models["modernbert"], "--model-name", "first") as first:
        port = first.target.rsplit(":", 1)[1]
        argv = [
            *serve_argv(tiny_models["bert"]),
            "--port",
            port,
            "--model-name",
            "second",
            "--no-warmup",
        ]
        second = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + EXIT_TIMEOUT
            while True:  # until it gives up; meanwhile no connection may reach it
                try:
                    second.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                seen = model_on_a_fresh_connection(first.target)
                assert seen == "first", f"a connection to the first server's port got {seen}"
                assert time.monotonic() < end, "the second server neither serves nor exits"
        finally:
            if second.poll() is None:
                second.kill()
            output = second.communicate()[0].decode()
        lines = [line for line in output.splitlines() if line.strip()]
        assert second.returncode == 2, output
        assert len(lines) == 1, output
        assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0]
        assert all(model_on_a_fresh_connection(first.target) == "first" for _ in range(6))
        check_still_serves(first)
        # start_server refuses too: the first server's health would answer SERVING for it.
        with pytest.raises(ServerStartError, match=f"127.0.0.1:{port} is not free"):
            start_server(tiny_models["bert"], port=int(port))


def check_still_serves(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        request = pb.RerankRequest(query="q", documents=[pb.Document(text="a")])
        assert rerank_pb2_grpc.RerankServiceStub(channel).Rerank(request, timeout=30).results


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_a_port_another_program_holds_exits_2_naming_it(held_port: int, flag: str) -> None:
    line = refused_start("/no/model/needed", flag, str(held_port))
    assert f"127.0.0.1:{held_port}" in line and flag in line, line


@pytest.mark.parametrize("flag", ["--host", "--metrics-host"])
def test_an_address_not_of_this_machine_exits_2_naming_it(flag: str) -> None:
    """192.0.2.1 is TEST-NET-1 (RFC 5737), never a local address."""
    metrics_port = str(free_port() if flag == "--metrics-host" else 0)
    line = refused_start("/no/model/needed", "--metrics-port", metrics_port, flag, "192.0.2.1")
    assert "192.0.2.1:" in line and flag in line and "Cannot assign requested address" in line, line


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"rdk-good-token\n\xff\xfe\n", "can't decode byte 0xff"),
        (b"# only a comment\n\n", "no token"),
    ],
    ids=["not UTF-8", "no token"],
)
def test_an_unusable_token_file_exits_2_naming_it(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(content)
    line = refused_start("/no/model/needed", "--auth-token-file", str(path))
    assert str(path) in line and problem in line, line
    assert "rdk-good-token" not in line


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=10):
            return True
    except ConnectionRefusedError:
        return False


def test_metrics_listen_on_the_grpc_host_unless_told_otherwise() -> None:
    """With ``--host 127.0.0.1`` the unauthenticated /metrics must not be on every interface.
    Linux routes all of 127.0.0.0/8 to loopback, so a port bound to 0.0.0.0 answers on
    127.0.0.2 too and one bound to 127.0.0.1 does not."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not a loopback address here (only Linux routes all of 127/8)")
    with run_sidecar(FAKE_MODEL, fake_factory(), metrics=True) as running:
        port = running.sidecar.metrics_port
        assert scrape(port)  # served on the gRPC host, 127.0.0.1
        assert not reachable("127.0.0.2", port)
    everywhere = Settings(model=FAKE_MODEL.model, warmup=False, metrics_host="0.0.0.0")
    with run_sidecar(everywhere, fake_factory(), metrics=True) as running:
        assert reachable("127.0.0.2", running.sidecar.metrics_port)


def test_metrics_host_comes_from_a_flag_or_the_environment() -> None:
    assert parse_settings(["--host", "127.0.0.1"], env={}).metrics_address == "127.0.0.1"
    env = {"RERANKD_METRICS_HOST": "0.0.0.0"}
    assert parse_settings(["--host", "127.0.0.1"], env=env).metrics_address == "0.0.0.0"
    flags = ["--host", "127.0.0.1", "--metrics-host", "::1"]
    assert parse_settings(flags, env=env).metrics_address == "::1"


def test_metrics_are_off_unless_a_port_is_given() -> None:
    """No fixed port is free on every machine (9090 is Prometheus's own), so by default two
    servers on one machine start side by side and nothing unauthenticated listens."""
    assert Settings().metrics_port == 0 and parse_settings([], env={}).metrics_port == 0


def test_the_metrics_port_must_differ_from_the_grpc_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(["--port", "50051", "--metrics-port", "50051"], env={})
    assert exit_info.value.code == 2
    assert "--metrics-port must differ from --port" in capsys.readouterr().err
