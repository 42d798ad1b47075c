"""The code stays lint-clean (ruff) and type-clean (mypy --strict on the packages)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON_TREES = [
    "client",
    "server",
    "opensearch_plugin_bridge",
    "tests",
    "scripts",
    "bench",
    "deploy",
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", *PYTHON_TREES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_the_packages(tmp_path: Path) -> None:
    result = run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"))
    assert result.returncode == 0, result.stdout + result.stderr
