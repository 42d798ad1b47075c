"""Threads that do the scheduler's blocking work, handing results straight to asyncio futures.

``loop.run_in_executor`` wraps every call in a ``concurrent.futures.Future``, chains it to an
asyncio one and grows its pool under a lock: about 16 us of the event loop's time per call
against 5 us here (one queue put, one ``call_soon_threadsafe``), on a path that crosses
threads two or three times per request. ``Worker`` is also an ``Executor``, so loading and
warming up a model on the model thread go through the same thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_Item = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.AbstractEventLoop | None", Any]


class Worker(concurrent.futures.Executor):
    """``threads`` threads taking calls from one queue, in order."""

    def __init__(self, threads: int, name: str) -> None:
        self._calls: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True)
            for i in range(threads)
        ]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Call ``fn(*args)`` on a worker thread; await the result on the running loop. A call
        whose future was cancelled before a thread took it is skipped (its caller left)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, args, loop, future))
        return future

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """The ``Executor`` interface (``loop.run_in_executor`` uses it)."""
        if self._closed:
            raise RuntimeError("cannot submit to a worker that was shut down")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((lambda: fn(*args, **kwargs), (), None, future))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let the threads finish the calls queued so far, then stop them."""
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._calls.put(None)
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, args, loop, future = item
            if loop is None:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as exc:
                        future.set_exception(exc)
                continue
            if future.cancelled():
                continue
            try:
                result, error = fn(*args), None
            except BaseException as exc:
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # a closed loop: nobody waits for it
                continue


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def model_executor() -> Worker:
    """The one thread a model runs on: load, warm-up and every batch.

    CPU PyTorch parallelises each operator with OpenMP, and OpenMP gives every thread that
    starts parallel work a team of workers of its own. Loading or warming up on another
    thread left a second team behind, and the model thread's operators then ran slower
    (docs/design.md, "One model thread for every torch computation").
    """
    return Worker(1, "rerankd-model")


def default_tokenizer_threads(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Half the CPUs this process may use, 2 to 8: calls tokenize side by side (the tokenizers
    library releases the GIL), while the library's own pool, the event loop and the model
    thread keep the other half (docs/operations.md, "Sizing the host"). The CPUs are the ones
    it may run on, cut to a container's CPU limit (cgroup v2 ``cpu.max``, e.g. a pod's
    ``limits.cpu``), which the affinity mask does not show."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 2
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 limit to read
        pass
    return min(8, max(2, cpus // 2))
