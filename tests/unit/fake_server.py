"""A fake rerankd server for the client and CLI tests: real gRPC on loopback, no model.

The servicer scores a text by its length, records every request with its metadata and
deadline, and lets the query (or, for GetModelInfo, the model name) steer failures:

- ``"status:NAME"`` aborts with ``grpc.StatusCode.NAME`` and details ``"fake NAME"``;
- ``"sleep:SECONDS"`` waits that long (or until the caller gives up) before answering;
- ``servicer.unavailable_first = N`` fails the next N calls with UNAVAILABLE;
- ``servicer.hang = True`` holds every call until the caller gives up or the server stops;
- ``RerankStream`` reads nothing and answers nothing until the caller gives up, so a caller's
  requests wait on flow control.

``FakeServer(credentials=...)`` serves TLS (or mTLS); :func:`make_certificates` makes a CA and
certificates for it (``support.certs``), so the TLS tests need no files from anywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from rerankd.v1 import rerank_pb2 as pb
from rerankd.v1 import rerank_pb2_grpc as pb_grpc
from support.certs import CertificateAuthority

MODEL = "fake-model"
USAGE = pb.Usage(queue_time_us=7, inference_time_us=11, batches=1)
INFO = pb.GetModelInfoResponse(
    model=pb.ModelInfo(
        name=MODEL,
        max_input_tokens=512,
        activation="torch.nn.Sigmoid",
        dtype="float32",
        device="cpu",
        attention_implementation="sdpa",
        modules="Transformer(ModernBertModel) > Pooling(cls) > Dense(GELU) > LayerNorm > Dense",
        batching=pb.BatchingLimits(
            max_batch_tokens=16384,
            max_batch_size=64,
            padded_batches=True,
            max_queue_pairs=4096,
            max_queue_tokens=1 << 33,
        ),
    ),
    limits=pb.RequestLimits(
        max_documents=1000,
        max_query_bytes=65536,
        max_document_bytes=524288,
        max_message_bytes=64 << 20,
    ),
    server_version="9.8.7",
)


class FakeServicer(pb_grpc.RerankServiceServicer):
    """RerankService with score = len(text); see the module docstring for the triggers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: list[Any] = []
        self.metadata: list[dict[str, str]] = []
        self.time_remaining: list[float | None] = []
        self.unavailable_first = 0
        self.hang = False

    @property
    def calls(self) -> int:
        """How many calls reached the servicer (retries included)."""
        return len(self.requests)

    def _enter(self, request: Any, trigger: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.requests.append(request)
            self.metadata.append(dict(context.invocation_metadata()))
            self.time_remaining.append(context.time_remaining())
            fail = self.unavailable_first > 0
            self.unavailable_first -= fail
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake warming up")
        command, _, argument = trigger.partition(":")
        if command == "status":
            context.abort(grpc.StatusCode[argument], f"fake {argument}")
        if command == "sleep" or self.hang:
            until = time.monotonic() + (float(argument) if command == "sleep" else 3600)
            while context.is_active() and time.monotonic() < until:
                time.sleep(0.01)

    def Rerank(self, request: pb.RerankRequest, context: grpc.ServicerContext) -> pb.RerankResponse:
        self._enter(request, request.query, context)
        order = sorted(range(len(request.documents)), key=lambda i: -len(request.documents[i].text))
        if request.top_n:
            order = order[: request.top_n]
        results = [
            pb.RerankResult(
                index=i,
                id=request.documents[i].id,
                score=len(request.documents[i].text),
                text=request.documents[i].text if request.return_documents else "",
            )
            for i in order
        ]
        usage = pb.Usage(input_tokens=sum(len(d.text) for d in request.documents))
        usage.MergeFrom(USAGE)
        return pb.RerankResponse(results=results, model=request.model or MODEL, usage=usage)

    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        self._enter(request, request.pairs[0].query if request.pairs else "", context)
        return pb.ScoreResponse(
            scores=[len(pair.text) for pair in request.pairs],
            model=request.model or MODEL,
            usage=USAGE,
        )

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetModelInfoResponse:
        self._enter(request, request.model, context)
        return INFO

    def RerankStream(
        self, requests: Iterator[pb.RerankStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.RerankStreamResponse]:
        while context.is_active():
            time.sleep(0.01)
        yield from ()


class FakeServer:
    """The fake servicer on a free 127.0.0.1 port; use as a context manager.

    ``target`` is what clients connect to; ``servicer`` holds what the calls recorded.
    ``credentials`` (``grpc.ssl_server_credentials``) makes it a TLS server.
    """

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self.servicer = FakeServicer()
        self._executor = ThreadPoolExecutor(max_workers=8)
        self._server = grpc.server(self._executor)
        pb_grpc.add_RerankServiceServicer_to_server(self.servicer, self._server)  # type: ignore[no-untyped-call]
        if credentials is None:
            port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            port = self._server.add_secure_port("127.0.0.1:0", credentials)
        self.port = port
        self.target = f"127.0.0.1:{port}"

    def __enter__(self) -> FakeServer:
        self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stop(grace=None).wait()
        self._executor.shutdown(wait=True)


@dataclass(frozen=True)
class Certificates:
    """PEM material for TLS tests: a CA, a server certificate for 127.0.0.1, localhost and
    rerankd.test, and a client certificate, both signed by the CA."""

    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes

    def server_credentials(self, *, require_client_auth: bool = False) -> grpc.ServerCredentials:
        """Server credentials; with ``require_client_auth`` only clients the CA signed get in."""
        return grpc.ssl_server_credentials(
            [(self.server_key, self.server_cert)],
            root_certificates=self.ca if require_client_auth else None,
            require_client_auth=require_client_auth,
        )


def make_certificates(common_name: str = "rerankd test CA") -> Certificates:
    """A fresh CA (``support.certs``) and certificates it signed, in memory."""
    authority = CertificateAuthority.create(common_name)
    server = authority.issue(
        "localhost",
        server=True,
        dns_names=("localhost", "rerankd.test"),  # a second name, for tls_server_name tests
        ip_addresses=("127.0.0.1",),
    )
    client = authority.issue_client()
    return Certificates(
        ca=authority.cert_pem(),
        server_cert=server.cert_pem(),
        server_key=server.key_pem(),
        client_cert=client.cert_pem(),
        client_key=client.key_pem(),
    )
