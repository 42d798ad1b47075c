"""Exit 0 when a rerankd health service reports SERVING, else 1: the image's HEALTHCHECK and,
when the server speaks TLS (which the kubelet's native gRPC probes cannot), the exec probes.

Standard library plus what the server image already has (grpcio, grpcio-health-checking), so
the image needs no grpc_health_probe binary. One Check call with a deadline; never retries.

    python healthcheck.py [--service rerankd.v1.Liveness] [--address 127.0.0.1:50051]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _parser() -> argparse.ArgumentParser:
    port = os.environ.get("RERANKD_PORT", "50051")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--service",
        default="rerankd.v1.RerankService",
        help="health service name: rerankd.v1.RerankService (ready) or "
        "rerankd.v1.Liveness (alive, also while draining)",
    )
    parser.add_argument("--address", default=f"127.0.0.1:{port}", help="HOST:PORT to check")
    parser.add_argument("--timeout", type=float, default=3.0, help="deadline in seconds")
    parser.add_argument("--tls-ca", default="", help="PEM CA of the server's certificate: use TLS")
    parser.add_argument("--tls-cert", default="", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    parser.add_argument("--tls-server-name", default="", help="name the certificate is for")
    return parser


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.tls_ca:
        return grpc.insecure_channel(args.address)
    credentials = grpc.ssl_channel_credentials(
        _read(args.tls_ca), _read(args.tls_key), _read(args.tls_cert)
    )
    name = args.tls_server_name
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(args.address, credentials, options=options)


def main(argv: list[str] | None = None) -> int:
    """Check once; print the status (or the error) so `docker inspect` shows why."""
    args = _parser().parse_args(argv)
    request = health_pb2.HealthCheckRequest(service=args.service)
    try:
        with _channel(args) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
    except (grpc.RpcError, OSError) as err:
        code = err.code().name if isinstance(err, grpc.RpcError) else type(err).__name__
        print(f"{args.service} at {args.address}: {code}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.service} at {args.address}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
