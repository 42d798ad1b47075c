"""The ``rerankd`` command line: query a server (rerank, score, info) or run one (serve).

Client subcommands print JSON on stdout so they compose with ``jq``; documents come from the
arguments or, when none are given, from JSON lines on stdin. ``serve``, ``bridge``, ``demo``
and ``make-tiny-model`` hand all their arguments to the server or bridge package, imported
only then, so the client works without those extras installed.

Connection options (target, TLS, token) are those of :mod:`rerankd.connection`, shared with
``rerankd eval`` and ``rerankd bridge``; each has an environment variable (``RERANKD_TARGET``,
``RERANKD_TLS_CA``, ...) so a pod can set them once, and a flag beats its variable.

Exit status: 0 on success, 1 when the server answers with an error (``error: CODE: details``
on stderr), 2 for bad usage or input (including unreadable certificate or token files).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from rerankd import __version__
from rerankd._types import TRUNCATIONS, Document, Usage
from rerankd.client import Client
from rerankd.connection import Connection, OptionError
from rerankd.connection import add_arguments as add_connection_arguments
from rerankd.errors import RerankdError

_PASSTHROUGH = {
    "serve": ("rerankd_server.app", "run the reranking sidecar (all arguments go to it)"),
    "bridge": (
        "rerankd_bridge.proxy",
        "run the OpenSearch/Elasticsearch reranking proxy (all arguments go to it)",
    ),
    "eval": (
        "rerankd.evaluate",
        "NDCG/MRR/recall before and after reranking a BEIR dataset (all arguments go to it)",
    ),
    "demo": (
        "rerankd_server.demo",
        "start a sidecar, rerank a sample search and stop (all arguments go to it)",
    ),
    "make-tiny-model": (
        "rerankd_server.tiny_models",
        "build a tiny random cross-encoder for tests (all arguments go to it)",
    ),
}


class _InputError(Exception):
    """Input the command cannot use (exit 2)."""


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in _PASSTHROUGH:
        return _passthrough(_PASSTHROUGH[args.command][0], extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    run: Callable[[argparse.Namespace], dict[str, Any]] = args.run
    try:
        output = run(args)
    except _InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RerankdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(output, indent=2, ensure_ascii=False), flush=True)
    except BrokenPipeError:  # the reader stopped early (``| head``): nothing left to tell
        _silence_stdout()
        return 1
    return 0


def _silence_stdout() -> None:
    """Point stdout at the null device, so the interpreter's last flush at exit does not
    fail on the closed pipe again (what Python's own docs advise for SIGPIPE)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # not a file: nothing to flush
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerankd",
        description="Query a rerankd server (rerank, score, info) or run one (serve).",
    )
    parser.add_argument("--version", action="version", version=f"rerankd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    connection = argparse.ArgumentParser(add_help=False)
    add_connection_arguments(connection, target_help="server address")
    connection.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="deadline of the call (default %(default)s)",
    )
    connection.add_argument("--model", default="", help="served model (default: the server's)")

    scoring = argparse.ArgumentParser(add_help=False, parents=[connection])
    scoring.add_argument("--query", required=True, help="the query every text is scored against")
    scoring.add_argument(
        "--raw-scores", action="store_true", help="return logits instead of activated scores"
    )
    scoring.add_argument(
        "--truncation",
        choices=TRUNCATIONS,
        default="default",
        help="what to do with over-long pairs: 'none' fails them (default %(default)s)",
    )

    rerank = commands.add_parser(
        "rerank", parents=[scoring], help="rerank documents against a query, best first"
    )
    rerank.add_argument("--top-n", type=int, default=0, help="return the best N only (0: all)")
    rerank.add_argument(
        "--return-documents", action="store_true", help="include each document's text"
    )
    rerank.add_argument(
        "documents",
        nargs="*",
        metavar="DOC",
        help='document texts; without any, JSON lines on stdin: "text" or {"id": .., "text": ..}',
    )
    rerank.set_defaults(run=_rerank)

    score = commands.add_parser(
        "score", parents=[scoring], help="score texts against a query, in input order"
    )
    score.add_argument(
        "texts", nargs="*", metavar="TEXT", help="texts; without any, JSON lines on stdin"
    )
    score.set_defaults(run=_score)

    info = commands.add_parser(
        "info", parents=[connection], help="describe the served model and the server's limits"
    )
    info.set_defaults(run=_info)

    for name, (_, help_text) in _PASSTHROUGH.items():
        # No options of our own, so `rerankd serve --help` reaches the server's parser.
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _client(args: argparse.Namespace) -> Client:
    """Build the client from the connection options; unusable options are input errors."""
    try:
        return Connection.from_args(args).client(timeout=args.timeout)
    except OptionError as err:
        raise _InputError(str(err)) from None


def _rerank(args: argparse.Namespace) -> dict[str, Any]:
    documents = [Document(text) for text in args.documents] or _read_documents(sys.stdin)
    with _client(args) as client:
        reranked = client.rerank(
            args.query,
            documents,
            top_n=args.top_n,
            return_documents=args.return_documents,
            raw_scores=args.raw_scores,
            truncation=args.truncation,
            model=args.model,
        )
    fields = ("index", "id", "score", "text") if args.return_documents else ("index", "id", "score")
    results = [{f: getattr(result, f) for f in fields} for result in reranked.results]
    return {"model": reranked.model, "results": results, "usage": _usage(reranked.usage)}


def _score(args: argparse.Namespace) -> dict[str, Any]:
    texts = args.texts or [doc.text for doc in _read_documents(sys.stdin)]
    with _client(args) as client:
        scored = client.score(
            [(args.query, text) for text in texts],
            raw_scores=args.raw_scores,
            truncation=args.truncation,
            model=args.model,
        )
    return {"model": scored.model, "scores": scored.scores, "usage": _usage(scored.usage)}


def _info(args: argparse.Namespace) -> dict[str, Any]:
    with _client(args) as client:
        return dataclasses.asdict(client.model_info(args.model))


def _usage(usage: Usage) -> dict[str, Any]:
    return dataclasses.asdict(usage)


def _read_documents(lines: Iterable[str]) -> list[Document]:
    """Parse JSON lines: each a string (the text) or an object with "text" and optional "id".

    Blank lines are skipped. Raises _InputError naming the first bad line, or when there is
    no document at all (the server would refuse the empty request anyway).
    """
    documents: list[Document] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise _InputError(f"stdin line {number}: not valid JSON ({err.msg})") from None
        if isinstance(value, str):
            documents.append(Document(value))
        elif (
            isinstance(value, dict)
            and isinstance(value.get("text"), str)
            and isinstance(value.get("id", ""), str)
        ):
            documents.append(Document(value["text"], value.get("id", "")))
        else:
            raise _InputError(
                f'stdin line {number}: expected a JSON string or {{"id": "...", "text": "..."}}'
            )
    if not documents:
        raise _InputError("no documents: give them as arguments or as JSON lines on stdin")
    return documents


def _passthrough(module_name: str, argv: list[str]) -> int:
    """Run ``module_name.main(argv)``, importing the server package only now."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        print(
            f"error: this command needs an extra ({err}); install it with: "
            "pip install 'rerankd[server]' (or 'rerankd[bridge]' for the bridge)",
            file=sys.stderr,
        )
        return 2
    return int(module.main(argv) or 0)
