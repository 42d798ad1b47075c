"""Logging set-up: plain text for people, JSON lines for log pipelines.

Per-request records carry ``request_id`` (from the caller's ``x-request-id`` metadata when it is
printable ASCII, else generated; either way sent back in the response's trailing metadata),
``method``, ``code``, ``duration_ms`` and ``items``; the JSON format emits them as fields.
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import time
from typing import Any

REQUEST_FIELDS = ("request_id", "method", "code", "duration_ms", "items")
#: Longest request id kept (a longer one is cut), so strangers cannot flood the log lines.
MAX_REQUEST_ID = 128
#: What an id sent back may hold: printable ASCII, as gRPC allows in a metadata value. Anything
#: else fails the call in gRPC's core as it sends the trailers, and a newline forges log lines.
_SAFE_ID = re.compile(r"[\x20-\x7e]+")


def request_id(context: Any) -> str:
    """The caller's ``x-request-id`` (cut to ``MAX_REQUEST_ID`` characters) when it is printable
    ASCII, else a new random one."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and _SAFE_ID.fullmatch(value):
            return value[:MAX_REQUEST_ID]
    # 64 random bits, as uuid4 has, from the random module: os.urandom is a system call per
    # call, and an id needs to be unique, not unpredictable (the module reseeds after a fork).
    return f"{random.getrandbits(64):016x}"


def shown(text: str, limit: int = 64) -> str:
    """A caller's string as a status message or a log line echoes it: the ``repr`` of at most
    ``limit`` characters (one line, whatever it holds), ``...`` where it was cut."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


class _CallerBytes(logging.Filter):
    """gRPC's Python layer logs every metadata value that is not UTF-8 at ERROR, with a
    traceback, twice per call ("Invalid encoding on ..."), then hands the value on as bytes:
    any caller could fill the log with tracebacks. The value is the caller's, not a fault of the
    server, so such a record becomes one DEBUG line (the bytes as ``repr`` shows them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith("Invalid encoding"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = record.exc_text = None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_GRPC_LOGGER = "grpc._cython.cygrpc"


def demote_caller_encoding_errors() -> None:
    """Install ``_CallerBytes`` on gRPC's logger (once; a server calls it as it starts)."""
    logger = logging.getLogger(_GRPC_LOGGER)
    if not any(isinstance(f, _CallerBytes) for f in logger.filters):
        logger.addFilter(_CallerBytes())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in REQUEST_FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Send logs to stderr as ``text`` or ``json``; quiet chatty libraries.

    In ``json`` every line must be a JSON object, so Python warnings go through logging.
    Progress bars (Hugging Face's "Loading weights", downloads), which write raw text to
    stderr, are turned off there, and in text too unless stderr is a terminal: in a log file
    or a pod's log they are noise. The log says what is loading instead.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json" or not sys.stderr.isatty():
        _disable_progress_bars()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        logging.captureWarnings(True)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "huggingface_hub", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _disable_progress_bars() -> None:
    try:
        from huggingface_hub.utils.tqdm import disable_progress_bars
        from transformers.utils import logging as transformers_logging
    except ImportError:  # without the server's libraries there is no bar to turn off
        return
    disable_progress_bars()
    transformers_logging.disable_progress_bar()
