"""Helpers of the reliability suite: fake-model servers, metrics counters, token files, and an
HTTP/2 client that never reads."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings

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


#: Far longer than any step of these tests takes; reached only when one hangs.
HANG = 15.0


def wait_for(condition: Callable[[], object], what: str) -> None:
    """Poll ``condition`` until it holds; fail, naming ``what``, after ``HANG`` seconds."""
    end = time.monotonic() + HANG
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


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


def grpc_headers(method: str) -> list[tuple[str, str]]:
    """The request headers of a gRPC call of ``method`` (``/package.Service/Method``)."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", "rerankd"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def grpc_message(message: bytes) -> bytes:
    """``message`` framed as gRPC sends it: not compressed, then its length in 4 bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


class NeverReading:
    """An HTTP/2 client that sends gRPC calls and never reads an answer: its receive window is
    0, so the server can send headers (a status alone) but no message. PyPI's ``h2``."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.socket = socket.create_connection((host, int(port)))
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        self.statuses: dict[int, str] = {}  # stream -> grpc-status of a status-only answer
        self._flush()

    def call(self, method: str, *messages: bytes) -> None:
        """Send one call, all its messages, as the server's flow control lets them in."""
        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream, grpc_headers(method))
        body = b"".join(map(grpc_message, messages))
        while body:
            room = min(self.h2.local_flow_control_window(stream), self.h2.max_outbound_frame_size)
            if room == 0:
                self.read(timeout=None)  # until the server opens its window
                continue
            chunk, body = body[:room], body[room:]
            self.h2.send_data(stream, chunk, end_stream=not body)
            self._flush()

    def read(self, timeout: float | None) -> None:
        """Take in what the server sent (settings, window updates, headers); never data."""
        self.socket.settimeout(timeout)
        try:
            data = self.socket.recv(1 << 16)
        except TimeoutError:
            return
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                fields = {bytes(k).decode(): bytes(v).decode() for k, v in event.headers}
                if "grpc-status" in fields:
                    self.statuses[event.stream_id] = fields["grpc-status"]
        self._flush()

    def _flush(self) -> None:
        self.socket.sendall(self.h2.data_to_send())


def h2_call(
    target: str, method: str, message: bytes, metadata: Sequence[tuple[str, bytes]]
) -> dict[str, str]:
    """One unary call over plain HTTP/2, with metadata values that gRPC's own clients refuse to
    send (control characters, non-ASCII bytes); the answer's headers and trailers together."""
    host, port = target.rsplit(":", 1)
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    headers = [(k.encode(), v.encode()) for k, v in grpc_headers(method)]
    conn.send_headers(stream, headers + [(k.encode(), v) for k, v in metadata])
    conn.send_data(stream, grpc_message(message), end_stream=True)
    fields: dict[str, str] = {}
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        while "grpc-status" not in fields:
            data = sock.recv(1 << 16)
            assert data, f"the server closed the connection; got {fields}"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    fields |= {
                        bytes(k).decode(): bytes(v).decode("latin-1") for k, v in event.headers
                    }
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"stream reset: error code {event.error_code}")
            sock.sendall(conn.data_to_send())
    return fields
