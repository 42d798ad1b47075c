"""One frozen settings object, built from flags and ``RERANKD_*`` environment variables.

Every option has a flag, an environment variable (the flag name upper-cased with
``RERANKD_`` in front, dashes as underscores) and a help line that states the trade-off.
Precedence: flag > environment > default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_MODEL = "cross-encoder/ettin-reranker-1b-v1"

#: Longest model name a request may carry (UTF-8 bytes); a longer one is INVALID_ARGUMENT. Served
#: names (a hub id, a folder path) are held to it too, so every served model can be asked for.
MAX_MODEL_NAME_BYTES = 1024
#: Largest ``--max-message-bytes``: an answer can be larger than its request (it echoes the texts
#: and adds each result's score), and gRPC's message limits are 32-bit (under 2 GiB).
MAX_MESSAGE_BYTES_LIMIT = 1 << 30
#: What an open call costs beyond its request bytes (gRPC's call and stream, the handler and its
#: context), counted against ``--max-queue-bytes`` for every call: 20,000 one-document calls
#: whose client never read an answer held 22.5 KiB each. Without it calls too small to count
#: were not bounded at all.
CALL_BYTES = 24 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything the sidecar is configured with; see ``build_parser`` for the meaning of each."""

    model: str = DEFAULT_MODEL
    model_name: str = ""
    extra_models: tuple[str, ...] = ()
    host: str = "0.0.0.0"
    port: int = 50051
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"
    max_batch_tokens: int = 0
    max_batch_size: int = 128
    lookahead_pairs: int = 512
    lookahead_batches: int = 4
    max_queue_pairs: int = 16384
    max_queue_tokens: int = 8_000_000
    max_queue_wait: float = 10.0
    max_queue_bytes: int = 512 * 1024 * 1024
    max_documents: int = 1000
    max_query_bytes: int = 64 * 1024
    max_document_bytes: int = 512 * 1024
    max_message_bytes: int = 8 * 1024 * 1024
    grace_period: float = 30.0
    warmup: bool = True
    cross_request_batching: bool = True
    score_cache_bytes: int = 0
    stream_max_in_flight: int = 8
    tokenizer_threads: int = 0
    event_loop: str = "auto"
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    auth_token_file: str = ""
    metrics_host: str = ""
    metrics_port: int = 0
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def served_name(self) -> str:
        """The name requests use for the default model."""
        return self.model_specs()[0][0]

    def model_specs(self) -> list[tuple[str, str]]:
        """(name, source) of every served model, the default first.

        A spec is ``SOURCE`` or ``NAME=SOURCE``; the default model's name may also come from
        ``--model-name``; otherwise the name is the source itself.
        """
        specs = []
        for i, spec in enumerate((self.model, *self.extra_models)):
            name, sep, source = spec.partition("=")
            if not sep or not name or "/" in name:  # a path or hub id holding "=" is a source
                name, source = "", spec
            if i == 0 and self.model_name:
                name = self.model_name
            specs.append((name or source, source))
        return specs

    @property
    def metrics_address(self) -> str:
        """Where /metrics listens: ``--metrics-host``, else the gRPC port's ``--host``."""
        return self.metrics_host or self.host


# (flag, type, help). Defaults come from Settings, so they are stated once.
_OPTIONS: list[tuple[str, type, str]] = [
    (
        "model",
        str,
        "Hugging Face model id or local folder, as SOURCE or NAME=SOURCE (NAME is what requests "
        "use, else SOURCE); repeat it to serve several, the first being the default. Serves "
        "Sentence Transformers cross-encoders: modular (the Ettin rerankers), single-module "
        "classifiers and causal-LM rerankers.",
    ),
    ("model-name", str, "Name of the first model in requests (default: its NAME= or source)."),
    ("host", str, "Address to listen on; 127.0.0.1 keeps a sidecar private to its pod."),
    ("port", int, "gRPC port."),
    ("device", str, "auto (CUDA when present), cpu, cuda or cuda:N."),
    (
        "dtype",
        str,
        "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16; "
        "bf16 is faster, fp32 matches Sentence Transformers to 1e-5.",
    ),
    (
        "attention",
        str,
        "auto (on CUDA: flash_attention_2 when installed, else packed where PyTorch has "
        "varlen attention, else sdpa; on CPU: sdpa), flash_attention_2, packed (ModernBERT "
        "without padding, checked against sdpa at load), sdpa or eager.",
    ),
    (
        "max-batch-tokens",
        int,
        "Token budget per model batch, counted as the model pays "
        "(padded: longest x count). 0 = auto (16384 on CUDA, 4096 on CPU); larger batches "
        "raise throughput and memory use.",
    ),
    ("max-batch-size", int, "Most pairs per batch; caps memory for short pairs."),
    (
        "lookahead-pairs",
        int,
        "Queued pairs the scheduler looks at to group similar lengths; "
        "more means less padding but more reordering between callers.",
    ),
    (
        "lookahead-batches",
        int,
        "How far past the oldest queued pair the scheduler may reach for similar lengths, in "
        "token budgets; bounds how much later work can finish before an earlier call.",
    ),
    (
        "max-queue-pairs",
        int,
        "Pairs admitted but not yet scored; beyond it calls get RESOURCE_EXHAUSTED.",
    ),
    (
        "max-queue-tokens",
        int,
        "Tokens admitted but not yet scored; beyond it calls get RESOURCE_EXHAUSTED.",
    ),
    (
        "max-queue-wait",
        float,
        "Longest estimated wait, in seconds, for the work queued ahead of a call; beyond it, "
        "or beyond the call's own deadline, RESOURCE_EXHAUSTED at once with a retry hint, "
        "instead of a wait that ends in DEADLINE_EXCEEDED. Lower sheds sooner; 0 turns the "
        "bound off (the deadline still applies).",
    ),
    (
        "max-queue-bytes",
        int,
        f"Request bytes of the calls not yet over, and {CALL_BYTES // 1024} KiB for each call "
        "itself, all models together, an answer waiting for its client to read it included "
        "(each byte costs two to five in memory); beyond it calls get RESOURCE_EXHAUSTED. At "
        f"least --max-message-bytes plus {CALL_BYTES // 1024} KiB.",
    ),
    ("max-documents", int, "Most documents per Rerank call (pairs per Score call)."),
    ("max-query-bytes", int, "Most UTF-8 bytes in a query."),
    ("max-document-bytes", int, "Most UTF-8 bytes in one document."),
    (
        "max-message-bytes",
        int,
        "Largest request message gRPC accepts (at most 1 GiB); answers may be larger by what "
        "each result adds.",
    ),
    ("grace-period", float, "Seconds to finish accepted calls after SIGTERM before exiting."),
    (
        "warmup",
        bool,
        "Run one batch at the full token budget and time two small ones before SERVING (slower "
        "start, no slow first call, batches sized by the measured fixed cost of a batch).",
    ),
    (
        "cross-request-batching",
        bool,
        "Let one batch carry pairs of several calls; off only to "
        "measure what batching across calls buys.",
    ),
    (
        "tokenizer-threads",
        int,
        "Threads that tokenize calls, several at once (the tokenizers library also splits a "
        "call's pairs over the cores). 0 = auto: half the CPUs this process may use, 2 to 8.",
    ),
    (
        "tls-cert",
        str,
        "PEM certificate chain: serve TLS (with --tls-key). Re-read when the file "
        "changes, so rotated secrets need no restart.",
    ),
    ("tls-key", str, "PEM private key for --tls-cert."),
    ("tls-client-ca", str, "PEM CA bundle: require client certificates it signed (mutual TLS)."),
    (
        "auth-token-file",
        str,
        "File of accepted bearer tokens, one per line; every RPC but health "
        "and reflection then needs 'authorization: Bearer <token>'. Re-read on change.",
    ),
    (
        "metrics-host",
        str,
        "Address of the Prometheus /metrics endpoint (unauthenticated); empty = the --host "
        "address, so a private gRPC port keeps its metrics private too.",
    ),
    (
        "metrics-port",
        int,
        "Port of the Prometheus /metrics endpoint; 0 (the default) turns it off. No port is "
        "free on every machine, so the operator picks one (the container images use 9090).",
    ),
    (
        "score-cache-bytes",
        int,
        "Memory for a cache of (model, truncation, query, text) scores; paging and "
        "repeated searches skip the model. 0 turns it off.",
    ),
    (
        "stream-max-in-flight",
        int,
        "Requests of one RerankStream worked on at once; a slow reader "
        "holds the stream to this many.",
    ),
    (
        "event-loop",
        str,
        "auto (uvloop when installed, else asyncio's own), uvloop or asyncio; uvloop spends "
        "less of the event loop's time on each call, which small calls on a fast device feel.",
    ),
    ("log-level", str, "DEBUG, INFO, WARNING or ERROR."),
    ("log-format", str, "text for people, json for log pipelines (one object per line)."),
]

_CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "attention": ("auto", "flash_attention_2", "packed", "sdpa", "eager"),
    "log-level": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "log-format": ("text", "json"),
    "event-loop": ("auto", "uvloop", "asyncio"),
}


def env_name(flag: str) -> str:
    """The environment variable for a flag: ``max-batch-tokens`` -> ``RERANKD_MAX_BATCH_TOKENS``."""
    return "RERANKD_" + flag.upper().replace("-", "_")


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``rerankd serve`` parser; defaults are taken from ``env`` (``os.environ``)."""
    env = os.environ if env is None else env
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="rerankd serve",
        description="Serve a cross-encoder reranker over gRPC (rerankd.v1.RerankService).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for flag, kind, help_text in _OPTIONS:
        attr = flag.replace("-", "_")
        default = getattr(defaults, attr)
        if flag == "model":  # repeatable: the first is --model, the others extra_models
            raw_models = env.get(env_name(flag))
            models = raw_models.split(",") if raw_models else [default]
            # The default it will use, from the environment too (argparse's own would say
            # None: the list stays empty until a flag is given). "%(default).0s" prints
            # nothing, and tells the formatter not to add that.
            shown = ",".join(models)
            parser.add_argument(
                "--model",
                action="append",
                default=None,
                help=f"{help_text} [env {env_name(flag)}] (default: {shown}%(default).0s)",
            )
            parser.set_defaults(env_models=models)
            continue
        raw = env.get(env_name(flag))
        if raw is not None:
            try:
                default = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError:
                parser.error(f"{env_name(flag)}={raw!r} is not a valid {kind.__name__}")
        help_line = f"{help_text} [env {env_name(flag)}]"
        if kind is bool:
            parser.add_argument(
                f"--{flag}", action=argparse.BooleanOptionalAction, default=default, help=help_line
            )
            continue
        parser.add_argument(
            f"--{flag}", type=kind, default=default, choices=_CHOICES.get(flag), help=help_line
        )
    return parser


def parse_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Parse flags (and the environment) into validated ``Settings``; exits 2 on bad values."""
    parser = build_parser(env)
    values = vars(parser.parse_args(argv))
    models = values.pop("model") or values.pop("env_models")
    values.pop("env_models", None)
    values["model"], values["extra_models"] = models[0], tuple(models[1:])
    settings = Settings(**values)
    problems = validate(settings)
    if problems:
        parser.error("; ".join(problems))
    return settings


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def validate(settings: Settings) -> list[str]:
    """Configuration errors, as messages (empty when the settings are usable)."""
    problems = []
    positive = (
        "stream_max_in_flight",
        "max_batch_size",
        "lookahead_pairs",
        "lookahead_batches",
        "max_queue_pairs",
        "max_queue_tokens",
        "max_documents",
        "max_query_bytes",
        "max_document_bytes",
        "max_message_bytes",
    )
    for name in positive:
        if getattr(settings, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    names = [name for name, _ in settings.model_specs()]
    if len(set(names)) != len(names):
        problems.append(f"--model names must differ: {', '.join(names)}")
    for name in names:
        if len(name.encode("utf-8")) > MAX_MODEL_NAME_BYTES:
            problems.append(f"--model name {name[:64]!r}... is over {MAX_MODEL_NAME_BYTES} bytes")
    if settings.score_cache_bytes < 0:
        problems.append("--score-cache-bytes must be 0 (off) or positive")
    if settings.max_batch_tokens < 0:
        problems.append("--max-batch-tokens must be 0 (auto) or positive")
    if settings.tokenizer_threads < 0:
        problems.append("--tokenizer-threads must be 0 (auto) or positive")
    if not 0 < settings.port < 65536 and settings.port != 0:
        problems.append("--port must be 0..65535")
    if settings.max_queue_wait < 0:
        problems.append("--max-queue-wait must be 0 (off) or positive")
    if settings.grace_period < 0:
        problems.append("--grace-period must not be negative")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        problems.append("--tls-cert and --tls-key go together")
    if settings.tls_client_ca and not settings.tls_cert:
        problems.append("--tls-client-ca needs --tls-cert and --tls-key")
    for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file"):
        path = getattr(settings, name)
        if path and not os.path.isfile(path):
            problems.append(f"--{name.replace('_', '-')} {path}: no such file")
    if not 0 <= settings.metrics_port < 65536:
        problems.append("--metrics-port must be 0..65535")
    same_host = settings.metrics_address == settings.host
    if settings.metrics_port and settings.metrics_port == settings.port and same_host:
        problems.append("--metrics-port must differ from --port")
    if settings.max_message_bytes > MAX_MESSAGE_BYTES_LIMIT:
        problems.append(f"--max-message-bytes must be at most {MAX_MESSAGE_BYTES_LIMIT} (1 GiB)")
    if settings.max_queue_bytes < settings.max_message_bytes + CALL_BYTES:
        problems.append(
            f"--max-queue-bytes must be at least --max-message-bytes plus {CALL_BYTES} "
            "(what a call costs beyond its request)"
        )
    if settings.max_documents > settings.max_queue_pairs:
        problems.append("--max-documents must not exceed --max-queue-pairs")
    return problems
