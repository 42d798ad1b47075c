"""Server reflection lists the services, so generic tools (grpcurl, Postman) need no .proto."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from rerankd_server.settings import Settings
from support.sidecar import run_sidecar


def test_reflection_describes_the_rerank_service(tiny_models: dict[str, Path]) -> None:
    settings = Settings(model=str(tiny_models["modernbert"]), device="cpu")
    with run_sidecar(settings) as running, grpc.insecure_channel(running.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"rerankd.v1.RerankService", "grpc.health.v1.Health"} <= services
        file = database.FindFileContainingSymbol("rerankd.v1.RerankService")
        assert file.package == "rerankd.v1"
        methods = {m.name for m in file.service[0].method}
        assert methods == {"Rerank", "Score", "GetModelInfo", "RerankStream"}
