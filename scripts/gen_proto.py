"""Regenerate the committed Python stubs from proto/ (or, with --check, verify them).

Run from anywhere: ``python scripts/gen_proto.py``. The proto path mirrors the Python
package path (proto/rerankd/v1 -> client/rerankd/v1), so protoc's imports are right
without rewriting. The grpcio-tools version is pinned in pyproject's dev extra.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "client"
PROTOS = ["rerankd/v1/rerank.proto"]


def generate(out_root: Path, proto_root: Path = PROTO_ROOT) -> None:
    """Run protoc (from grpcio-tools) for every proto under ``proto_root`` into ``out_root``."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    for proto in PROTOS:
        args = [
            "protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            str(proto_root / proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {proto}")


def generated_files(root: Path) -> list[Path]:
    """The stub files protoc writes for PROTOS, relative to ``root``."""
    names: list[Path] = []
    for proto in PROTOS:
        stem = Path(proto).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            names.append(stem.parent / (stem.name + suffix))
    return names


def stale_stubs(proto_root: Path = PROTO_ROOT, out_root: Path = OUT_ROOT) -> list[str]:
    """Stubs under ``out_root`` that are missing or differ from what ``proto_root`` generates."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), proto_root)
        return [
            str(name)
            for name in generated_files(Path(tmp))
            if not (out_root / name).exists()
            or not filecmp.cmp(Path(tmp) / name, out_root / name, shallow=False)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs drift")
    args = parser.parse_args(argv)
    if not args.check:
        generate(OUT_ROOT)
        return 0
    stale = stale_stubs()
    if stale:
        print("stubs differ from proto/; run: python scripts/gen_proto.py", *stale, sep="\n  ")
        return 1
    print("stubs up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
