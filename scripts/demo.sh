#!/usr/bin/env bash
# The README's main job: install rerankd's server into .venv, start the sidecar, rerank a sample
# search, stop. Serves cross-encoder/ettin-reranker-1b-v1 (or --model PATH_OR_ID); where that
# cannot be downloaded it says so and uses a tiny demo model with random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.13.0
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e '.[server,tiny]'
exec "$VENV/bin/rerankd" demo "$@"
