"""The connection options every rerankd command shares: where the server is, TLS, a token.

``rerankd rerank|score|info``, ``rerankd eval`` and ``rerankd bridge`` all add these flags
with :func:`add_arguments` and build their client from :class:`Connection`, so each has the
same names, the same environment variables (``RERANKD_`` + the flag in capitals:
``--tls-ca`` reads ``RERANKD_TLS_CA``; a flag beats its variable) and the same checks:

    --target HOST:PORT[,HOST:PORT...] | dns:///NAME:PORT     RERANKD_TARGET
    --token TOKEN                                             RERANKD_TOKEN
    --token-file FILE                                         RERANKD_TOKEN_FILE
    --tls                                                     RERANKD_TLS=1
    --tls-ca FILE, --tls-cert FILE, --tls-key FILE            RERANKD_TLS_CA, ...
    --tls-server-name NAME                                    RERANKD_TLS_SERVER_NAME

A token file is read as the server reads its own (``rerankd serve --auth-token-file``): the
first line that is neither blank nor a ``#`` comment is the token, so one mounted secret can
serve both sides. Files are read once, when the client is built.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerankd.client import _SCHEMES, DEFAULT_TARGET, AsyncClient, Client, Targets

__all__ = ["Connection", "OptionError", "add_arguments", "env_name", "read_token"]

# Options that name a file or a name: (flag, metavar, help).
_NAMED = (
    (
        "--token-file",
        "FILE",
        "file holding the bearer token (its first line that is not blank "
        "or a # comment); keeps the token out of the process list",
    ),
    ("--tls-ca", "FILE", "PEM CA bundle that signed the server's certificate; implies --tls"),
    ("--tls-cert", "FILE", "PEM client certificate for mutual TLS, with --tls-key; implies --tls"),
    ("--tls-key", "FILE", "PEM private key of --tls-cert"),
    (
        "--tls-server-name",
        "NAME",
        "name to verify the server's certificate against when it differs from the target's host",
    ),
)


class OptionError(ValueError):
    """Connection options that cannot be used: an unreadable file, an empty token, ..."""


def env_name(flag: str) -> str:
    """The environment variable of ``flag``: ``--tls-ca`` -> ``RERANKD_TLS_CA``."""
    return "RERANKD_" + flag.removeprefix("--").replace("-", "_").upper()


def add_arguments(
    parser: argparse.ArgumentParser,
    *,
    target_flags: tuple[str, ...] = ("--target",),
    target_help: str = "rerankd server",
) -> None:
    """Add the connection flags to ``parser`` (defaults from the environment).

    ``target_flags`` names the target option (the first is primary; ``rerankd bridge`` also
    accepts its older ``--reranker``); it always reads ``RERANKD_TARGET`` and lands in
    ``args.target``.
    """
    parser.add_argument(
        *target_flags,
        dest="target",
        default=os.environ.get("RERANKD_TARGET", DEFAULT_TARGET),
        help=f"{target_help}: HOST:PORT, comma-separated HOST:PORT replicas balanced "
        "round-robin, or any gRPC target such as dns:///NAME:PORT (env RERANKD_TARGET; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("RERANKD_TOKEN", ""),
        help="bearer token sent as 'authorization: Bearer TOKEN' (env RERANKD_TOKEN); "
        "prefer --token-file, which keeps it out of the process list",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get("RERANKD_TLS", "").strip().lower() in {"1", "true", "yes", "on"},
        help="connect with TLS, trusting the system's CAs unless --tls-ca is given "
        "(env RERANKD_TLS=1)",
    )
    for flag, metavar, help_text in _NAMED:
        env = env_name(flag)
        parser.add_argument(
            flag, default=os.environ.get(env, ""), metavar=metavar, help=f"{help_text} (env {env})"
        )


def read_token(path: str) -> str:
    """The token in file ``path``: its first line that is not blank or a ``#`` comment.

    Raises:
        OptionError: the file cannot be read or holds no token.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise OptionError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise OptionError(f"--token-file {path}: not UTF-8 text") from None
    token = next((t for t in map(str.strip, lines) if t and not t.startswith("#")), "")
    if not token:
        raise OptionError(f"--token-file {path}: no token in it (only blank or # lines)")
    return token


@dataclass(frozen=True)
class Connection:
    """Where and how to reach a rerankd server, as the connection flags give it."""

    target: str = DEFAULT_TARGET
    token: str = field(default="", repr=False)
    token_file: str = ""
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Connection:
        """The options :func:`add_arguments` parsed into ``args``."""
        return cls(
            target=args.target,
            token=args.token,
            token_file=args.token_file,
            tls=args.tls,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_server_name=args.tls_server_name,
        )

    def targets(self) -> Targets:
        """A scheme target as is; otherwise comma-separated ``host:port`` replicas."""
        if self.target.startswith(_SCHEMES):
            return self.target
        entries = [entry.strip() for entry in self.target.split(",")]
        return entries[0] if len(entries) == 1 else entries

    def client(self, *, timeout: float | None) -> Client:
        """A blocking client; raises OptionError for options that cannot be used."""
        with _option_errors():
            return Client(self.targets(), timeout=timeout, **self._credentials())

    def async_client(self, *, timeout: float | None) -> AsyncClient:
        """An asyncio client; raises OptionError for options that cannot be used."""
        with _option_errors():
            return AsyncClient(self.targets(), timeout=timeout, **self._credentials())

    def _credentials(self) -> dict[str, Any]:
        token = read_token(self.token_file) if self.token_file else self.token
        return {
            "token": token or None,
            "tls": self.tls,
            "root_certificates": Path(self.tls_ca) if self.tls_ca else None,
            "certificate_chain": Path(self.tls_cert) if self.tls_cert else None,
            "private_key": Path(self.tls_key) if self.tls_key else None,
            "tls_server_name": self.tls_server_name or None,
        }


@contextmanager
def _option_errors() -> Iterator[None]:
    """Turn what the client constructors raise for unusable options into OptionError."""
    try:
        yield
    except OptionError:
        raise
    except OSError as err:
        raise OptionError(f"cannot read {err.filename}: {err.strerror}") from None
    except ValueError as err:
        raise OptionError(str(err)) from None
