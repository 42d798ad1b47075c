"""Typed domain errors of the sidecar.

The servicer maps each class to one gRPC status in exactly one place
(``servicer._STATUS``); nothing below the servicer knows about gRPC.
"""

from __future__ import annotations


class RerankdServerError(Exception):
    """Base class: an error a caller can be told about."""


class InvalidRequest(RerankdServerError):
    """The request breaks a documented rule or limit (INVALID_ARGUMENT)."""


class ModelNotFound(RerankdServerError):
    """The request names a model this server does not serve (NOT_FOUND)."""


class Overloaded(RerankdServerError):
    """Admission would exceed a queue bound, or the work ahead would outlast the call's
    deadline or the longest allowed wait (RESOURCE_EXHAUSTED); retry later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until the queue has likely drained enough


class DeadlineExpired(RerankdServerError):
    """The caller's deadline passed before scoring finished (DEADLINE_EXCEEDED)."""


class NotReady(RerankdServerError):
    """The server is loading its model or draining (UNAVAILABLE)."""


class ModelFailure(RerankdServerError):
    """The model produced something unusable, e.g. a non-finite score (INTERNAL)."""


class ModelLoadError(Exception):
    """The configured model could not be loaded; the process exits with this message."""


class StartupError(Exception):
    """The server cannot start as configured (a port in use, an unusable token file); the
    process exits with code 2 and this one-line message."""
