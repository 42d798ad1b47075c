"""How a failed call's status reaches the caller, and when it cannot (``servicer._guarded``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import pytest

from rerankd.v1 import rerank_pb2 as pb
from rerankd_server.errors import DeadlineExpired
from rerankd_server.servicer import RerankServicer, _guarded, _Received
from rerankd_server.settings import Settings


class Call:
    """A server-side call context; ``ended`` says gRPC has already finished the call (its
    deadline passed), when a real abort fails in gRPC's core and is logged as an error;
    ``known`` whether ``done()`` says so yet (the event loop may not have heard)."""

    def __init__(self, ended: bool, known: bool = True, remaining: float | None = None) -> None:
        self.ended = ended
        self.known = known
        self.remaining = remaining  # what ``time_remaining()`` says: None, no deadline
        self.aborted: list[tuple[grpc.StatusCode, str]] = []

    def time_remaining(self) -> float | None:
        return self.remaining

    def add_done_callback(self, callback: Any) -> None:
        pass

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def done(self) -> bool:
        return self.ended and self.known

    async def abort(self, code: grpc.StatusCode, message: str) -> NoReturn:
        if self.ended:  # the class of grpc.aio's ExecuteBatchError
            raise grpc.aio.InternalError("execute_batch failed: the call is over")
        self.aborted.append((code, message))
        raise grpc.aio.AbortError("Locally aborted.")  # grpc.aio's, once the status is sent


async def _expire(request: Any, context: Any) -> NoReturn:
    raise DeadlineExpired("the deadline passed before the batch ran")


async def test_an_error_is_sent_as_its_status() -> None:
    servicer = RerankServicer(Settings(model="fake"))
    call = Call(ended=False)
    with pytest.raises(grpc.aio.AbortError):
        await _guarded("Rerank", _expire, None, servicer)(object(), call)
    assert [code for code, _ in call.aborted] == [grpc.StatusCode.DEADLINE_EXCEEDED]


async def test_an_error_for_a_call_grpc_already_ended_is_not_sent() -> None:
    """Seen on a GPU (3 in 3,000 calls with 2-50 ms deadlines here): the scheduler's expiry and
    gRPC's own deadline race; the handler must end quietly instead of aborting a dead call."""
    servicer = RerankServicer(Settings(model="fake"))
    seen: list[str] = []
    call = Call(ended=True)
    with pytest.raises(asyncio.CancelledError):
        await _guarded("Rerank", _expire, lambda name, code, s: seen.append(code), servicer)(
            object(), call
        )
    assert call.aborted == [] and seen == ["DEADLINE_EXCEEDED"]


async def test_an_error_for_a_call_that_ends_as_it_is_sent_ends_quietly() -> None:
    """The same race one step later: ``done()`` has not heard of the end yet, and the abort
    fails. gRPC logs a traceback at ERROR for a handler that raises the failure (30 in 32,000
    calls with 0.5-20 ms deadlines on 2 CPUs) and nothing for one that ends as cancelled."""
    servicer = RerankServicer(Settings(model="fake"))
    seen: list[str] = []
    call = Call(ended=True, known=False)
    with pytest.raises(asyncio.CancelledError):
        await _guarded("Rerank", _expire, lambda name, code, s: seen.append(code), servicer)(
            object(), call
        )
    assert call.aborted == [] and seen == ["DEADLINE_EXCEEDED"]


async def _answer(request: Any, context: Any) -> str:
    return "the response"


async def test_an_answer_is_returned_before_the_deadline() -> None:
    servicer = RerankServicer(Settings(model="fake"))
    for remaining in (None, 0.5):
        call = Call(ended=False, remaining=remaining)
        assert await _guarded("Rerank", _answer, None, servicer)(object(), call) == "the response"
        assert call.aborted == []


@pytest.mark.parametrize("ended", [False, True])
async def test_an_answer_ready_after_the_deadline_ends_the_call_as_deadline_exceeded(
    ended: bool,
) -> None:
    """A stream that ended as its deadline fell made gRPC log an ExecuteBatchError traceback
    at ERROR (2 in 3,000 streams with 5-50 ms deadlines): returning from the handler has gRPC
    send the status of a call its core has ended. The answer goes the error path instead: a
    DEADLINE_EXCEEDED status while the call lasts, else the handler ends as cancelled."""
    servicer = RerankServicer(Settings(model="fake"))
    seen: list[str] = []
    call = Call(ended=ended, known=False, remaining=0.0)
    handler = _guarded("RerankStream", _answer, lambda name, code, s: seen.append(code), servicer)
    with pytest.raises(asyncio.CancelledError if ended else grpc.aio.AbortError):
        await handler(object(), call)
    assert seen == ["DEADLINE_EXCEEDED"]
    assert [code for code, _ in call.aborted] == (
        [] if ended else [grpc.StatusCode.DEADLINE_EXCEEDED]
    )


async def _write_to_an_ended_call(request: Any, context: Any) -> NoReturn:
    raise grpc.aio.InternalError("execute_batch failed")  # what a failed context.write raises


@pytest.mark.parametrize(("remaining", "code"), [(0.0, "DEADLINE_EXCEEDED"), (5.0, "CANCELLED")])
async def test_a_stream_whose_write_fails_ends_as_cancelled_without_an_error(
    remaining: float, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A write fails in gRPC's core once the call is over (its deadline fell, its client
    left) before the event loop heard: 1 in 2,300 streams with 5-50 ms deadlines and client
    cancels was logged as an unexpected error with a traceback, and counted INTERNAL."""
    servicer = RerankServicer(Settings(model="fake"))
    seen: list[str] = []
    call = Call(ended=True, known=False, remaining=remaining)
    handler = _guarded(
        "RerankStream", _write_to_an_ended_call, lambda name, c, s: seen.append(c), servicer
    )
    with pytest.raises(asyncio.CancelledError):
        await handler(object(), call)
    assert seen == [code] and call.aborted == []
    assert not [
        r for r in caplog.records if r.name.startswith("rerankd") and r.levelno >= logging.WARNING
    ]


async def test_a_drain_with_no_grace_left_is_over_at_once_when_nothing_runs() -> None:
    servicer = RerankServicer(Settings(model="fake"))
    assert await servicer.drain(0.0)  # nothing in flight: no call to cancel, no warning
    servicer.call_started()
    assert not await servicer.drain(0.0)
    servicer.call_ended()
    assert await servicer.drain(0.0)


class HeldServicer(RerankServicer):
    """Answers each Rerank once ``gate`` opens."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.gate = asyncio.Event()

    async def _rerank(self, request: Any, deadline: float | None) -> Any:
        await self.gate.wait()
        return pb.RerankResponse(model="held")


class Writes(Call):
    def __init__(self) -> None:
        super().__init__(ended=False)
        self.written: list[Any] = []

    async def write(self, message: Any) -> None:
        self.written.append(message)


async def test_a_stream_reads_no_request_before_it_may_work_on_it() -> None:
    """Reading a request parses it: one read ahead of the permits would be held unbounded
    by --max-queue-bytes while the stream waits."""
    servicer = HeldServicer(Settings(model="fake", stream_max_in_flight=2))
    read: list[int] = []

    async def requests() -> AsyncIterator[Any]:
        for i in range(5):
            read.append(i)
            item = pb.RerankStreamRequest(request_id=str(i), request=pb.RerankRequest(query="q"))
            yield _Received(item, item.ByteSize())

    context = Writes()
    stream = asyncio.create_task(servicer.RerankStream(requests(), context))
    await asyncio.sleep(0.05)
    assert read == [0, 1]  # as many as the permits
    servicer.gate.set()
    await asyncio.wait_for(stream, 5)
    assert sorted(reply.request_id for reply in context.written) == ["0", "1", "2", "3", "4"]
    assert servicer.held_bytes == 0
