"""Helpers of the reliability suite: fake-model servers, metrics counters, token files."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from rerankd_server.scoring.base import Scorer
from rerankd_server.settings import Settings
from support.certs import write_file
from support.fake_scorer import FakeScorer
from support.metrics import Samples

#: Settings of a server whose "model" is the deterministic FakeScorer: it starts in milliseconds,
#: so tests about transport, security and validation need no torch model.
FAKE_MODEL = Settings(model="fake", warmup=False)


def fake_factory(scorer: FakeScorer | None = None) -> Callable[[Settings], Scorer]:
    """A scorer factory for ``run_sidecar`` that serves ``scorer`` (a fresh FakeScorer if None)."""
    chosen = scorer if scorer is not None else FakeScorer()

    def factory(_: Settings) -> Scorer:
        return chosen

    return factory


def requests_total(samples: Samples, method: str, code: str) -> float:
    """``rerankd_requests_total{method=..., code=...}`` (0 when never observed)."""
    key = ("rerankd_requests_total", (("code", code), ("method", method)))
    return samples.get(key, 0.0)


def new_token() -> str:
    """A random bearer token, distinctive enough to grep for in logs."""
    return "rdk-" + secrets.token_urlsafe(24)


def write_tokens(path: Path, *tokens: str) -> None:
    """(Re)write a token file, one token per line, with a comment; its mtime always moves on."""
    write_file(path, ("# rerankd test tokens\n" + "\n".join(tokens) + "\n").encode())
