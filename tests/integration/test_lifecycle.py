"""The sidecar as a process: start-up failure, configuration from the environment, drain."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from rerankd import Client, InvalidArgument, NotFound, Unavailable
from rerankd_server.process import ServerStartError, free_port, start_server
from rerankd_server.settings import Settings
from support.fake_scorer import FakeScorer
from support.metrics import wait_until_queued
from support.sidecar import run_sidecar


def test_missing_model_exits_at_once_with_advice(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ServerStartError) as err:
        start_server(tmp_path / "no-such-model", ready_timeout=60)
    message = str(err.value)
    assert "exited with code 2" in message
    assert "rerankd serve --model /path/to/model-folder" in message
    assert time.monotonic() - started < 50  # far from the 60 s ready timeout: it exited


def test_a_server_not_ready_in_time_is_killed_and_says_so(tiny_models: dict[str, Path]) -> None:
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=r"still running after 0.2s without SERVING"):
        start_server(tiny_models["modernbert"], ready_timeout=0.2)  # importing torch takes longer
    assert time.monotonic() - started < 15


def test_uncached_hub_id_offline_exits_with_advice() -> None:
    with pytest.raises(ServerStartError) as err:
        start_server("cross-encoder/ettin-reranker-1b-v1", env={"HF_HUB_OFFLINE": "1"})
    assert "HF_HUB_OFFLINE" in str(err.value)
    assert "exited with code 2" in str(err.value)


def test_settings_come_from_the_environment(tiny_models: dict[str, Path]) -> None:
    env = {"RERANKD_MAX_BATCH_TOKENS": "777", "RERANKD_MAX_DOCUMENTS": "7"}
    with start_server(tiny_models["bert"], "--max-batch-size", "9", env=env) as server:
        info = Client(server.target).model_info()
        assert info.batching.max_batch_tokens == 777
        assert info.batching.max_batch_size == 9
        assert info.limits.max_documents == 7
        assert server.stop() == 0


def test_help_lists_every_flag_with_its_environment_variable() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rerankd", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flags = ("--model", "--port", "--device", "--dtype", "--max-batch-tokens", "--max-queue-pairs")
    assert all(flag in out for flag in flags)
    assert "RERANKD_MAX_BATCH_TOKENS" in out


def test_sigterm_finishes_accepted_calls_then_exits_zero(tiny_models: dict[str, Path]) -> None:
    docs = ["word " * 120] * 200
    # Seconds of work here; the grace period and deadlines leave room for a slow CI machine.
    metrics_port = free_port()
    args = ("--max-batch-tokens", "512", "--grace-period", "120")
    with start_server(
        tiny_models["modernbert"], *args, "--metrics-port", str(metrics_port)
    ) as server:
        with Client(server.target, timeout=120) as client, ThreadPoolExecutor(6) as pool:
            calls = [pool.submit(client.rerank, f"query {i}", docs) for i in range(6)]
            # SIGTERM once all six are accepted and queued; one sent earlier would be refused.
            wait_until_queued(metrics_port, 6 * 200, calls)
            server.proc.send_signal(signal.SIGTERM)
            results = [call.result(timeout=120) for call in calls]
        assert all(len(r.results) == 200 for r in results)
        assert server.proc.wait(timeout=60) == 0
        with Client(server.target, timeout=5) as late, pytest.raises(Unavailable):
            late.rerank("q", ["d"])
        assert "draining" in server.output()


def test_health_watchers_do_not_hold_a_draining_server(tiny_models: dict[str, Path]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with start_server(tiny_models["modernbert"], "--grace-period", "60") as server:
        channel = grpc.insecure_channel(server.target)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        assert server.stop(timeout=30) == 0
        assert time.monotonic() - started < 20
        statuses = [r.status for r in watch]
        assert statuses[-1:] == [health_pb2.HealthCheckResponse.NOT_SERVING]
        channel.close()


def test_json_logs_are_json_lines_from_start_to_exit(tiny_models: dict[str, Path]) -> None:
    """A log pipeline parses every line: loading the model (whose library draws a progress
    bar), serving a call, a refused call and the drain included."""
    with start_server(tiny_models["modernbert"], "--log-format", "json") as server:
        with Client(server.target, timeout=30) as client:
            assert client.rerank("q", ["d"]).results
            with pytest.raises(InvalidArgument):
                client.rerank(" ", ["d"])
        assert server.stop() == 0
    lines = server.output().splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"line {number} of the server's output is not JSON: {line[:200]!r}")
    messages = [entry["msg"] for entry in entries]
    assert any(m.startswith("serving ") for m in messages), messages
    assert any(entry.get("code") == "INVALID_ARGUMENT" for entry in entries)
    assert any("draining" in m for m in messages)


def test_the_server_runs_on_the_event_loop_asked_for(tiny_models: dict[str, Path]) -> None:
    docs = ["ls lists files", "rain tomorrow", "cd changes directory"]
    answers = {}
    for choice, loop in (("auto", "uvloop"), ("asyncio", "asyncio")):
        with start_server(tiny_models["modernbert"], "--event-loop", choice) as server:
            with Client(server.target, timeout=30) as client:
                answers[loop] = [client.rerank("list files", docs) for _ in range(3)]
            assert f"event loop: {loop}" in server.output()
    for reranked in answers["uvloop"]:  # the times are on the loop's own clock: sane on both
        assert 0 <= reranked.usage.queue_time_us < 10_000_000
        assert 0 <= reranked.usage.inference_time_us < 10_000_000
    assert [r.results for r in answers["uvloop"]] == [r.results for r in answers["asyncio"]]


def test_uvloop_asked_for_where_it_is_missing_exits_2_in_one_line(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "uvloop").mkdir()  # shadows the installed one, as if it were not there
    (tmp_path / "uvloop" / "__init__.py").write_text("raise ImportError('no uvloop here')\n")
    env = {"PYTHONPATH": str(tmp_path)}
    with pytest.raises(ServerStartError) as err:
        start_server(tiny_models["modernbert"], "--event-loop", "uvloop", env=env)
    output = str(err.value)
    assert "exited with code 2" in output and "Traceback" not in output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "uvloop is not installed" in errors[0], output


def _served(client: Client, model: str) -> None:
    """Wait until ``model`` answers (UNAVAILABLE until then), at most 30 s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            assert len(client.rerank("q", ["d"], model=model, timeout=5).results) == 1
            return
        except Unavailable:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_model_still_loading_is_unavailable_not_unknown() -> None:
    # NOT_FOUND tells a client not to retry; a configured model that is loading will serve.
    gate = threading.Event()

    def factory(settings: Settings) -> FakeScorer:
        if settings.model == "slow-source":
            assert gate.wait(30)
        return FakeScorer()

    settings = Settings(model="fast=fast-source", extra_models=("slow=slow-source",), warmup=False)
    with (
        run_sidecar(settings, factory, wait_ready=False) as running,
        Client(running.target) as client,
    ):
        _served(client, "fast")  # the default model serves first
        with pytest.raises(Unavailable, match="still loading"):
            client.rerank("q", ["d"], model="slow", timeout=5)
        with pytest.raises(NotFound):
            client.rerank("q", ["d"], model="no-such-model", timeout=5)
        gate.set()
        _served(client, "slow")


def test_a_log_that_is_no_terminal_gets_no_progress_bars(tiny_models: dict[str, Path]) -> None:
    # Loading bars are raw text in a log file or a pod's log; the log says what loads.
    server = start_server(tiny_models["modernbert"])
    server.stop()
    output = server.output()
    assert "serving" in output and "Loading weights" not in output and "it/s]" not in output
