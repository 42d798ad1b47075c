#!/usr/bin/env bash
# GPU check for rerankd: a random Ettin-1B-shaped reranker in the Ettin layout, padded vs packed, on one GPU.
# Sized for under 5 minutes on one H200; prints a clear error and exits 2 without CUDA.
# Usage: bash bench/gpu_check.sh [--pairs N]   (PYTHON=/path/to/python to choose the interpreter;
# it needs torch and transformers, e.g. the project's .venv after `bash scripts/demo.sh` or `bash scripts/test.sh`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import torch, transformers" 2>/dev/null; then
    echo "error: $PYTHON cannot import torch and transformers; set PYTHON to an environment with the server extras" >&2
    exit 2
fi
exec timeout 290 "$PYTHON" -m bench.gpu_check "$@"
