"""The load driver's steady window and the busy time counted inside it: the figures the
``simgpu`` benchmark reports as a device's busy fraction without the run's ramp-up and drain."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from bench.load import closed_loop
from bench.scorers import DeviceModel, NoopScorer, SimulatedGpu, Timed
from bench.workloads import Request
from rerankd_server.scoring.packed import PackedBatch


class _Sleeper:
    """A target that answers each call after ``seconds``, logging (on ``perf_counter``) when
    each call was sent and when each caller had its first answer."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sent: list[float] = []
        self.first_answers: dict[int, float] = {}

    async def open(self, count: int) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, slot: int, query: str, docs: list[str], timeout: float | None) -> Any:
        self.sent.append(time.perf_counter())
        await asyncio.sleep(self.seconds)
        self.first_answers.setdefault(slot, time.perf_counter())


def _requests(count: int) -> list[Request]:
    return [Request(query="q", documents=["d"]) for _ in range(count)]


def test_the_steady_window_runs_from_every_first_answer_to_the_last_send() -> None:
    target = _Sleeper(0.01)
    result = asyncio.run(closed_loop(target, _requests(12), [1] * 12, concurrency=3))
    assert result.steady is not None and len(target.sent) == 12
    start, end = result.steady
    assert start >= max(target.first_answers.values())  # every caller had an answer
    assert max(target.sent[:-1]) <= end <= target.sent[-1]  # the last request's send
    assert start < end


def test_no_steady_window_when_callers_outnumber_the_requests() -> None:
    result = asyncio.run(closed_loop(_Sleeper(0.001), _requests(2), [1] * 2, concurrency=3))
    assert result.steady is None


class _Forward:
    """A scorer whose forward pass sleeps ``seconds`` and logs when it slept."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.slept: list[tuple[float, float]] = []

    def forward(self, batch: Any) -> Any:
        start = time.perf_counter()
        time.sleep(self.seconds)
        self.slept.append((start, time.perf_counter()))
        return np.zeros(1, dtype=np.float32)


def test_busy_between_counts_only_the_forward_time_inside_the_window() -> None:
    inner = _Forward(0.02)
    timed = Timed(inner)  # type: ignore[arg-type]
    before = time.perf_counter()
    timed.forward(None)
    between = time.perf_counter()
    timed.forward(None)
    after = time.perf_counter()
    (a, b), (c, d) = inner.slept  # within the spans Timed counts
    assert timed.busy_between(before, after) == timed.busy_s
    assert timed.busy_between(a, b) == b - a
    assert abs(timed.busy_between(a, (a + b) / 2) - (b - a) / 2) < 1e-9
    assert timed.busy_between((a + b) / 2, (c + d) / 2) > (b - a) / 2 + (d - c) / 2 - 1e-9
    assert timed.busy_between(between, between) == 0.0


def test_the_simulated_device_gets_the_batches_a_gpu_would() -> None:
    """Packed rows for an unpadded device (a ModernBERT on CUDA), the scorer's own otherwise;
    with each pair's length for the simulated time."""
    rows = [[5, 6, 7], [8]]
    packed, lengths = SimulatedGpu(NoopScorer(), DeviceModel(0.0, 0.0, padded=False)).collate(
        rows, None
    )
    assert isinstance(packed, PackedBatch)
    assert packed.input_ids.tolist() == [5, 6, 7, 8]
    assert lengths == [3, 1]
    padded, _ = SimulatedGpu(NoopScorer(), DeviceModel(0.0, 0.0, padded=True)).collate(rows, None)
    assert padded == NoopScorer().collate(rows, None)
