"""``rerankd demo``: start the sidecar, rerank a sample search, print the result, stop.

This is the README's first command. It serves the requested model (by default the Ettin
reranker from the Hugging Face hub); when that model cannot be had, as on a machine without
network access, it says so plainly and serves a tiny demo model with RANDOM weights instead,
whose scores mean nothing but show every moving part working. It ends with the one command
that serves a real model for good.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rerankd import Client
from rerankd_server.process import ServerStartError, start_server
from rerankd_server.settings import DEFAULT_MODEL
from rerankd_server.tiny_models import build_tiny_model

QUERY = "how do I list the files in a directory"
DOCUMENTS = [
    ("cp", "cp - copy files and directories"),
    ("ls", "ls - list directory contents"),
    ("find", "find - search for files in a directory hierarchy"),
    ("tar", "tar - an archiving utility"),
    ("du", "du - estimate file space usage"),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rerankd demo", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local model folder")
    args = parser.parse_args(argv)

    served: str | None = args.model
    with tempfile.TemporaryDirectory(prefix="rerankd-demo-") as tmp:
        print(f"starting rerankd with {args.model} ...", flush=True)
        try:
            server = start_server(args.model, "--log-level", "WARNING", ready_timeout=900)
        except ServerStartError as exc:
            served = None
            reason = _reason(str(exc))
            print(f"\n*** {args.model} cannot be loaded here: {reason}")
            print("*** Using a TINY DEMO MODEL WITH RANDOM WEIGHTS instead: its scores are")
            print("*** meaningless; they only show the sidecar working end to end.\n", flush=True)
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
            tiny = build_tiny_model(Path(tmp) / "tiny-demo-model")
            server = start_server(tiny, "--log-level", "WARNING")
        with server, Client(server.target) as client:
            info = client.model_info()
            print(f"serving {info.name} on {info.device} ({info.dtype}) at {server.target}")
            result = client.rerank(QUERY, DOCUMENTS, return_documents=True)
            print(f"\nquery: {QUERY}")
            for rank, hit in enumerate(result.results, 1):
                print(f"{rank}. {hit.score:+.4f}  [{hit.id}] {hit.text}")
            usage = {"input_tokens": result.usage.input_tokens, "batches": result.usage.batches}
            print("\nusage:", json.dumps(usage))
            code = server.stop()
    print(f"rerankd stopped (exit code {code})")
    print(f"\n{next_step(served)}")
    return 0 if code == 0 else 1


def next_step(model: str | None) -> str:
    """The command that serves ``model`` (None: the demo fell back to the tiny model, so a
    folder of a real one is what the user needs)."""
    folder = "/path/to/model-folder" if model is None else shlex.quote(model)
    command = f"{_rerankd()} serve --model {folder} --port 50051"
    if model is None:
        return (
            f"Next, copy a real cross-encoder's folder to this machine and serve it:\n  {command}"
        )
    return f"Next, serve it for good:\n  {command}"


def _rerankd() -> str:
    """How to run this installation's ``rerankd`` from the current folder (``.venv/bin/rerankd``
    for the README's set-up), or plain ``rerankd`` when it is not beside this Python."""
    program = Path(sys.executable).with_name("rerankd")
    if not program.is_file():
        return "rerankd"
    relative = os.path.relpath(program)
    return relative if not relative.startswith("..") else str(program)


def _reason(message: str) -> str:
    """The server's own one-line explanation out of its captured output."""
    for line in message.splitlines():
        if "cannot load model" in line:
            return line.split("': ", 1)[-1].strip()
    return message.splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
