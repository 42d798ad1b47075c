"""The wire contract: committed stubs match the .proto, and the .proto passes buf's lint and build.

The .proto is the product for every non-Python user, and the Python stubs are generated from it and
committed; either drifting silently breaks someone.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
GEN_PROTO = ROOT / "scripts" / "gen_proto.py"
PROTO_ROOT = ROOT / "proto"
BUF = ROOT / "tests" / "node" / "node_modules" / ".bin" / "buf"


def _load_gen_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", GEN_PROTO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_proto() -> None:
    result = subprocess.run(
        [sys.executable, str(GEN_PROTO), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stubs up to date" in result.stdout


def test_check_detects_drift(tmp_path: Path) -> None:
    gen_proto = _load_gen_proto()
    proto_root = tmp_path / "proto"
    shutil.copytree(PROTO_ROOT, proto_root)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    gen_proto.generate(stubs, proto_root)
    assert gen_proto.stale_stubs(proto_root, stubs) == []

    proto = proto_root / "rerankd" / "v1" / "rerank.proto"
    text = proto.read_text(encoding="utf-8")
    marker = "message GetModelInfoRequest {\n"
    assert marker in text
    proto.write_text(
        text.replace(marker, marker + "  // Added by the drift test.\n  bool drift = 99;\n"),
        encoding="utf-8",
    )
    stale = gen_proto.stale_stubs(proto_root, stubs)
    assert "rerankd/v1/rerank_pb2.py" in stale
    assert "rerankd/v1/rerank_pb2.pyi" in stale


def test_check_detects_missing_stubs(tmp_path: Path) -> None:
    gen_proto = _load_gen_proto()
    assert len(gen_proto.stale_stubs(PROTO_ROOT, tmp_path)) == 3


def _buf(*args: str) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.skip(f"buf not installed ({BUF} missing); run: npm ci --prefix tests/node")
    return subprocess.run(
        [str(BUF), *args],
        cwd=PROTO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_buf_lint_is_clean() -> None:
    result = _buf("lint")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_buf_build_succeeds(tmp_path: Path) -> None:
    image = tmp_path / "image.binpb"
    result = _buf("build", "-o", str(image))
    assert result.returncode == 0, result.stdout + result.stderr
    assert image.stat().st_size > 0
