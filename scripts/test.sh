#!/usr/bin/env bash
# Install rerankd with its server and dev extras into a virtual environment, then run the tests.
# This is the README's test command; .ci/run calls it with a fresh VENV.
#   VENV    where the virtual environment lives (default: .venv; created when missing)
#   extra arguments are passed to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
"$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.13.0
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e '.[dev]'
if command -v npm >/dev/null; then
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
else
  echo "npm not found: the Node.js client and buf lint tests will be skipped" >&2
fi
exec "$VENV/bin/python" -m pytest "$@"
