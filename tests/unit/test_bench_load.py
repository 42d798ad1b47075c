"""The load driver's steady window and the busy time counted inside it: the figures the
``simgpu`` benchmark reports as a device's busy fraction without the run's ramp-up and drain."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from bench.load import closed_loop
from bench.scorers import Timed
from bench.workloads import Request


class _Sleeper:
    """A target that answers each call after ``seconds`` and logs when each was sent."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sent: list[float] = []

    async def open(self, count: int) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, slot: int, query: str, docs: list[str], timeout: float | None) -> Any:
        self.sent.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.seconds)


def _requests(count: int) -> list[Request]:
    return [Request(query="q", documents=["d"]) for _ in range(count)]


def test_the_steady_window_runs_from_every_first_answer_to_the_last_send() -> None:
    target = _Sleeper(0.02)
    result = asyncio.run(closed_loop(target, _requests(12), [1] * 12, concurrency=3))
    assert result.steady is not None
    start, end = result.steady
    # Four rounds of three callers, 20 ms each: the window opens with the first round's
    # answers (20 ms) and closes when the fourth round is sent (60 ms).
    assert 0.03 <= end - start <= 0.08
    assert len(target.sent) == 12


def test_no_steady_window_when_callers_outnumber_the_requests() -> None:
    result = asyncio.run(closed_loop(_Sleeper(0.001), _requests(2), [1] * 2, concurrency=3))
    assert result.steady is None


class _Forward:
    """A scorer whose forward pass sleeps ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def forward(self, batch: Any) -> Any:
        import time

        time.sleep(self.seconds)
        return np.zeros(1, dtype=np.float32)


def test_busy_between_counts_only_the_forward_time_inside_the_window() -> None:
    import time

    timed = Timed(_Forward(0.05))  # type: ignore[arg-type]
    before = time.perf_counter()
    timed.forward(None)
    middle = time.perf_counter()
    time.sleep(0.05)
    timed.forward(None)
    after = time.perf_counter()
    assert abs(timed.busy_between(before, after) - timed.busy_s) < 1e-9
    assert 0.05 <= timed.busy_between(before, middle) <= timed.busy_s / 2 + 1e-9
    half = (before + middle) / 2  # half of the first pass, give or take the call's own time
    assert 0.4 * 0.05 <= timed.busy_between(half, middle) <= 0.6 * 0.05 + 0.01
    assert timed.busy_between(middle, middle + 0.04) == 0.0
