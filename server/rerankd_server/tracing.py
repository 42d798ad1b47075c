"""Optional OpenTelemetry tracing: one server span per RPC when ``opentelemetry-api`` is installed.

rerankd only creates spans, through the global tracer provider; where they go is configured the
standard way (``opentelemetry-instrument rerankd serve ...`` or the ``OTEL_*`` variables with the
SDK installed). Without the package, or with the API's default no-op provider, this costs
nothing. The caller's ``traceparent`` metadata makes the span a child of its trace.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - exercised where the package is absent
    trace = None  # type: ignore[assignment]
    propagate = None  # type: ignore[assignment]


RECHECK_S = 1.0  # how long an answer of ``enabled`` stands


class _Enabled:
    """Whether spans go anywhere: a tracer provider was set (an SDK or an agent); without one
    a span would be dropped and only its building (a context, a propagator, attributes)
    would cost. Asked on every call and looked up at most once a second, since a provider
    may be set after start: the lookup reads the environment, a few percent of a small
    call's time on the event loop."""

    def __init__(self) -> None:
        self._answer = False
        self._until = -1.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self._until:
            self._answer, self._until = _provider_set(), now + RECHECK_S
        return self._answer

    def refresh(self) -> None:
        """Look again on the next call (a server starting picks up a provider set just
        before it)."""
        self._until = -1.0


def _provider_set() -> bool:
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


enabled = _Enabled()


@contextlib.contextmanager
def server_span(method: str, metadata: Sequence[tuple[str, Any]] | None) -> Iterator[Any]:
    """A span for one RPC (None without OpenTelemetry); set attributes on it as you go."""
    if trace is None or propagate is None:
        yield None
        return
    carrier = {key: str(value) for key, value in metadata or ()}
    tracer = trace.get_tracer("rerankd")
    with tracer.start_as_current_span(
        f"rerankd.v1.RerankService/{method}",
        context=propagate.extract(carrier),
        kind=trace.SpanKind.SERVER,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": "rerankd.v1.RerankService",
            "rpc.method": method,
        },
    ) as span:
        yield span
