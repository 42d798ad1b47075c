"""Settings: flag > environment > default, and bad values are refused with a clear message."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rerankd_server.app import loop_factory, scheduler_config
from rerankd_server.batching import (
    CPU_BATCH_OVERHEAD_SHARE,
    CUDA_BATCH_OVERHEAD_SHARE,
    MEASURED_OVERHEAD_SHARE,
)
from rerankd_server.errors import StartupError
from rerankd_server.settings import (
    DEFAULT_MODEL,
    Settings,
    build_parser,
    env_name,
    parse_settings,
)
from rerankd_server.workers import default_tokenizer_threads
from support.fake_scorer import FakeScorer


def test_defaults() -> None:
    settings = parse_settings([], env={})
    assert settings == Settings()
    assert settings.model == DEFAULT_MODEL and settings.port == 50051
    assert settings.served_name == DEFAULT_MODEL


def test_flag_beats_environment_beats_default() -> None:
    env = {"RERANKD_PORT": "6000", "RERANKD_MAX_BATCH_SIZE": "7", "RERANKD_WARMUP": "no"}
    settings = parse_settings(["--port", "7000"], env=env)
    assert settings.port == 7000
    assert settings.max_batch_size == 7
    assert settings.warmup is False
    assert parse_settings(["--no-cross-request-batching"], env={}).cross_request_batching is False
    assert env_name("max-batch-tokens") == "RERANKD_MAX_BATCH_TOKENS"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--max-batch-size", "0"], {}, "--max-batch-size must be at least 1"),
        (["--max-documents", "20000"], {}, "must not exceed --max-queue-pairs"),
        (["--max-queue-bytes", "1000"], {}, "--max-queue-bytes must be at least --max-message"),
        (["--max-message-bytes", str(2**31)], {}, "--max-message-bytes must be at most 1073741824"),
        (["--dtype", "int8"], {}, "invalid choice"),
        ([], {"RERANKD_PORT": "eighty"}, "RERANKD_PORT='eighty' is not a valid int"),
        ([], {"RERANKD_WARMUP": "maybe"}, "RERANKD_WARMUP='maybe' is not a valid bool"),
        (["--max-batch-tokens", "-1"], {}, "0 (auto) or positive"),
        (["--tokenizer-threads", "-2"], {}, "--tokenizer-threads must be 0 (auto) or positive"),
        (["--event-loop", "trio"], {}, "invalid choice"),
    ],
)
def test_bad_values_exit_with_a_message(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(argv, env=env)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_token_budget_is_auto_or_as_set() -> None:
    scorer = FakeScorer(max_tokens=64)
    assert scheduler_config(Settings(), scorer).limits.max_batch_tokens == 4096
    assert scheduler_config(Settings(max_batch_tokens=10), scorer).limits.max_batch_tokens == 10
    assert scheduler_config(Settings(max_batch_tokens=999), scorer).limits.max_batch_tokens == 999
    assert (
        scheduler_config(Settings(), FakeScorer(device="cuda:0")).limits.max_batch_tokens == 16384
    )


def test_a_batch_costs_more_fixed_overhead_on_a_gpu() -> None:
    cpu = scheduler_config(Settings(), FakeScorer()).limits
    gpu = scheduler_config(Settings(max_batch_tokens=4096), FakeScorer(device="cuda:0")).limits
    assert (cpu.overhead_share, cpu.batch_overhead) == (CPU_BATCH_OVERHEAD_SHARE, 82)
    assert (gpu.overhead_share, gpu.batch_overhead) == (CUDA_BATCH_OVERHEAD_SHARE, 1024)


def test_a_measured_batch_fixed_cost_replaces_the_default_within_bounds() -> None:
    def share(fixed: float) -> float:
        return scheduler_config(Settings(), FakeScorer(), fixed).limits.overhead_share

    assert share(819.2) == 0.2  # the budget is 4,096
    assert (share(0.0), share(1e9)) == MEASURED_OVERHEAD_SHARE


@pytest.mark.parametrize(("cpus", "threads"), [(1, 2), (2, 2), (6, 3), (16, 8), (64, 8)])
def test_tokenizer_threads_are_sized_from_the_cpus_unless_set(
    cpus: int, threads: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(cpus)))
    assert default_tokenizer_threads(tmp_path / "no-cgroup-limit") == threads
    auto = scheduler_config(Settings(), FakeScorer()).tokenizer_threads
    assert auto == default_tokenizer_threads()
    settings = parse_settings([], env={"RERANKD_TOKENIZER_THREADS": "5"})
    assert scheduler_config(settings, FakeScorer()).tokenizer_threads == 5


@pytest.mark.parametrize(("limit", "threads"), [("400000 100000", 2), ("1200000 100000", 6)])
def test_a_container_cpu_limit_sizes_the_tokenizer_threads(
    limit: str, threads: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(64)))  # a large node
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(limit + "\n")
    assert default_tokenizer_threads(cpu_max) == threads
    cpu_max.write_text("max 100000\n")  # no limit
    assert default_tokenizer_threads(cpu_max) == 8
    assert default_tokenizer_threads(tmp_path / "absent") == 8


def test_the_event_loop_is_uvloop_where_installed_unless_asyncio_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvloop

    assert parse_settings([], env={"RERANKD_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    assert loop_factory("auto") is loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as where it is not installed
    assert loop_factory("auto") is None
    with pytest.raises(StartupError, match="uvloop is not installed"):
        loop_factory("uvloop")


def test_help_gives_the_models_that_would_be_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag: no wrap inside a model id

    def model_help(env: dict[str, str]) -> str:
        text = " ".join(build_parser(env).format_help().split())
        start = text.index("--model MODEL Hugging")
        return text[start : text.index("--model-name", start)]

    assert f"(default: {DEFAULT_MODEL})" in model_help({})
    assert "(default: fast=/m/a,/m/b)" in model_help({"RERANKD_MODEL": "fast=/m/a,/m/b"})
    assert "None" not in model_help({})
