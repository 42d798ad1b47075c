"""Typed errors for failed rerankd calls.

Callers branch on what went wrong (fix the request, back off, try another replica) without
importing grpc: every failed call raises a subclass of :class:`RerankdError`, chained to the
original ``grpc.RpcError``. The status-code mapping lives in :func:`from_rpc_error` alone.
"""

from __future__ import annotations

import grpc


class RerankdError(Exception):
    """A call failed; also raised as is for status codes without a subclass.

    Attributes:
        code: the gRPC status code (``grpc.StatusCode``).
        details: the server's (or gRPC's) message, possibly empty.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class InvalidArgument(RerankdError):
    """The request breaks a limit or rule of the contract; retrying it cannot help."""


class NotFound(RerankdError):
    """The requested model is not served by this server."""


class ResourceExhausted(RerankdError):
    """The server's queue is full or the message is too large; back off before retrying."""


class Unavailable(RerankdError):
    """The server is starting, draining or unreachable (after the client's own retries)."""


class DeadlineExceeded(RerankdError):
    """The call's deadline passed before the server answered."""


class Unauthenticated(RerankdError):
    """The call carried no valid credentials (e.g. a missing or wrong token)."""


class PermissionDenied(RerankdError):
    """The caller's credentials do not allow this call."""


class Internal(RerankdError):
    """A bug or a broken model on the server."""


_BY_CODE: dict[grpc.StatusCode, type[RerankdError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INTERNAL: Internal,
}


def from_rpc_error(err: grpc.RpcError) -> RerankdError:
    """Translate a gRPC failure into the matching :class:`RerankdError` subclass.

    Works for sync (``grpc.Call``) and async (``grpc.aio.AioRpcError``) errors; a bare
    ``RpcError`` without a status becomes ``RerankdError`` with code UNKNOWN. The caller
    raises the result ``from err`` so the original stays attached.
    """
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    return _BY_CODE.get(code, RerankdError)(code, details or "")


_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def from_status(number: int, details: str) -> RerankdError:
    """The error for a numeric gRPC status code, as carried inside stream replies."""
    code = _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(code, RerankdError)(code, details)
