"""Fixtures of the reliability suite (helpers live in ``helpers.py``).

The suite runs alone with ``python -m pytest tests/reliability``; it shares ``tiny_models`` with
the rest of the tests through ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.certs import TlsFiles, write_tls_files


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    """A fresh CA with a loopback server certificate and a client certificate, as PEM files."""
    return write_tls_files(tmp_path / "tls")
