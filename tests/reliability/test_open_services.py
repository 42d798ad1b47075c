"""Health and reflection answer every caller, token or not; what callers can make them hold is
bounded.

Unbounded, 10,000 health checks whose client never read their answers held 233 MiB, and 40
reflection streams asking for a 4 MB symbol held 698 MiB (a reflection answer echoes its
request whole): any caller who could reach the port could exhaust the server's memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc
from rerankd_server.security import MAX_OPEN_CALLS, MAX_OPEN_REQUEST_BYTES
from support.fake_scorer import FakeScorer
from support.sidecar import RunningSidecar, run_sidecar

from .helpers import FAKE_MODEL, HANG, NeverReading, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def server() -> Iterator[tuple[RunningSidecar, grpc.Channel]]:
    with (
        run_sidecar(FAKE_MODEL, lambda _: FakeScorer()) as running,
        grpc.insecure_channel(running.target) as channel,
    ):
        yield running, channel


def reflect(channel: grpc.Channel, **request: Any) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=HANG
    )
    return next(iter(call))


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_no_open_request_is_larger_than_a_name_needs(
    server: tuple[RunningSidecar, grpc.Channel],
) -> None:
    _, channel = server
    health = health_pb2_grpc.HealthStub(channel)
    huge = "x" * (MAX_OPEN_REQUEST_BYTES + 1)
    request = health_pb2.HealthCheckRequest(service=huge)
    assert code_of(lambda: health.Check(request, timeout=HANG)) == grpc.StatusCode.INVALID_ARGUMENT
    watch = health.Watch(request, timeout=HANG)
    assert code_of(lambda: next(iter(watch))) == grpc.StatusCode.INVALID_ARGUMENT
    symbol = {"file_containing_symbol": huge}
    assert code_of(lambda: reflect(channel, **symbol)) == grpc.StatusCode.INVALID_ARGUMENT
    # Names of any useful length still work, and an unknown one is echoed as a short prefix.
    listed = reflect(channel, list_services="")
    assert "rerankd.v1.RerankService" in {s.name for s in listed.list_services_response.service}
    unknown = health_pb2.HealthCheckRequest(service="y" * 2000)
    with pytest.raises(grpc.RpcError) as err:
        health.Check(unknown, timeout=HANG)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(err.value.details() or "") < 100
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=HANG).status == SERVING


def test_open_calls_are_bounded_in_number_and_the_rerank_service_is_not_held(
    server: tuple[RunningSidecar, grpc.Channel],
) -> None:
    """A client that never reads keeps each call open: half of them Watch streams, half checks
    whose answer waits. Past the bound health and reflection refuse new calls; once the calls
    end (the connection closes), the count is back to 0 and they answer again."""
    running, channel = server
    gate = running.sidecar._open_services
    assert gate is not None
    stuck = NeverReading(running.target)
    check = health_pb2.HealthCheckRequest().SerializeToString()
    try:
        for i in range(MAX_OPEN_CALLS):
            method = "Watch" if i % 2 else "Check"
            stuck.call(f"/grpc.health.v1.Health/{method}", check)
        wait_for(lambda: gate.open == MAX_OPEN_CALLS, f"{MAX_OPEN_CALLS} open calls")
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
        assert code_of(lambda: health.Check(request, timeout=HANG)) == exhausted
        assert code_of(lambda: next(iter(health.Watch(request, timeout=HANG)))) == exhausted
        assert code_of(lambda: reflect(channel, list_services="")) == exhausted
        rerank = rerank_pb2_grpc.RerankServiceStub(channel)
        one = pb.RerankRequest(query="q", documents=[pb.Document(text="d")])
        assert len(rerank.Rerank(one, timeout=HANG).results) == 1
    finally:
        stuck.socket.close()
    wait_for(lambda: gate.open == 0, "the open calls to end with their connection")
    assert health.Check(request, timeout=HANG).status == SERVING
