"""Process faults under load: SIGTERM fails no accepted call; after SIGKILL and a restart on the
same port, clients recover through their retries."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from rerankd import Client
from rerankd.client import _DEFAULT_OPTIONS
from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.process import free_port, start_server
from support.metrics import wait_until_queued

# The channel options rerankd.Client uses (retries of UNAVAILABLE); this test needs a raw stub
# for per-call request ids.
SERVICE_CONFIG = list(_DEFAULT_OPTIONS.items())

DOCS = ["ls - list directory contents", "cp - copy files", "word " * 60, ""]


class Load:
    """Threads calling Rerank in a loop, recording every outcome with its time and request id."""

    def __init__(self, target: str, threads: int = 4) -> None:
        self.outcomes: list[tuple[float, str, str, str]] = []  # (time, code, details, id)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(target, i), daemon=True)
            for i in range(threads)
        ]

    def _run(self, target: str, worker: int) -> None:
        request = pb.RerankRequest(query="query", documents=[pb.Document(text=d) for d in DOCS])
        with grpc.insecure_channel(target, options=SERVICE_CONFIG) as channel:
            rerank = rerank_pb2_grpc.RerankServiceStub(channel).Rerank
            i = 0
            while not self._stop.is_set():
                i += 1
                request_id = f"w{worker}-{i}"
                try:
                    rerank(request, timeout=10, metadata=(("x-request-id", request_id),))
                    outcome = ("OK", "")
                except grpc.RpcError as exc:
                    outcome = (exc.code().name, exc.details() or "")
                with self._lock:
                    self.outcomes.append((time.monotonic(), *outcome, request_id))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def wait_for_successes(self, count: int, since: float = 0.0, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while sum(1 for t, code, *_ in self.outcomes if t > since and code == "OK") < count:
            if time.monotonic() > end:
                raise AssertionError(f"fewer than {count} successes: {Counter(self.codes())}")
            time.sleep(0.05)

    def codes(self, since: float = 0.0, until: float = float("inf")) -> list[str]:
        return [code for t, code, *_ in self.outcomes if since < t <= until]


def server_outcomes(output: str) -> dict[str, list[str]]:
    """request id -> the status code of each attempt the server's handler took in and logged.

    One id can have several attempts: the client's channel retries UNAVAILABLE (a drain
    refusal), and every retry carries the same metadata.
    """
    codes: dict[str, list[str]] = {}
    for line in output.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if "request_id" in entry:
                codes.setdefault(entry["request_id"], []).append(entry["code"])
    return codes


@pytest.mark.slow
def test_sigterm_under_load_fails_no_accepted_call(tiny_models: dict[str, Path]) -> None:
    metrics_port = free_port()
    # Per-call records of successful calls are DEBUG.
    args = ("--log-format", "json", "--log-level", "DEBUG", "--metrics-port", str(metrics_port))
    server = start_server(tiny_models["modernbert"], *args)
    with server, Load(server.target) as load, ThreadPoolExecutor(1) as pool:
        load.wait_for_successes(20)
        # A long call in flight holds the drain open (about a second here), so the load's calls
        # meet a draining handler; without it the drain could end before any of them arrived.
        with Client(server.target, timeout=60) as client:
            long_call = pool.submit(client.rerank, "query", ["word " * 120] * 600)
            # SIGTERM only once the long call is admitted (the load holds at most 16 pairs);
            # sent earlier, the long call itself would be refused.
            wait_until_queued(metrics_port, 600, [long_call])
            server.proc.send_signal(signal.SIGTERM)
            assert len(long_call.result(timeout=60).results) == 600
        assert server.proc.wait(timeout=60) == 0
    accepted = server_outcomes(server.output())
    # Calls the server's handler took in either succeeded or were refused for the drain...
    assert {code for codes in accepted.values() for code in codes} <= {"OK", "UNAVAILABLE"}
    # ...calls never handed to a handler were refused while the port closed, never half-done...
    closing = {"UNAVAILABLE", "CANCELLED"}
    for _, code, details, request_id in load.outcomes:
        attempts = accepted.get(request_id, [])
        if "OK" in attempts:  # ...a call the server answered is seen as answered...
            assert attempts[-1] == "OK" and code == "OK", (request_id, code, details, attempts)
        else:  # ...and a refused one stays refused through the client's retries, whose last
            # attempt may have met the handler (UNAVAILABLE) or the closing port.
            assert code in closing, (request_id, code, details, attempts)
    assert Counter(load.codes())["OK"] >= 20
    assert any("UNAVAILABLE" in codes for codes in accepted.values())  # drain refusals happened


@pytest.mark.slow
def test_sigkill_and_restart_clients_recover(tiny_models: dict[str, Path]) -> None:
    model = tiny_models["modernbert"]
    first = start_server(model)
    port = int(first.target.rsplit(":", 1)[1])
    with Load(first.target) as load:
        load.wait_for_successes(20)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(30)
        killed = time.monotonic()
        with start_server(model, port=port) as second:
            restarted = time.monotonic()
            load.wait_for_successes(40, since=restarted)
            stopping = time.monotonic()
            assert second.stop() == 0
    during = Counter(load.codes(since=killed, until=restarted))
    assert set(during) <= {"OK", "UNAVAILABLE"}, during
    # Once a client's channel has reconnected, its calls succeed again: no failure after the
    # first success of each worker is allowed (channels reconnect with their own backoff).
    after = load.codes(since=restarted, until=stopping)
    first_ok = after.index("OK")
    assert Counter(after[first_ok:])["OK"] >= 40
    tail = after[first_ok + 8 :]  # every worker (4) has reconnected by then
    assert tail and set(tail) == {"OK"}, Counter(tail)
