#!/bin/sh
# rerankd image entrypoint: pick the model, then exec the CLI (so rerankd is PID 1 and gets
# SIGTERM directly). A model baked in at build time (/models/baked) is served when
# RERANKD_MODEL is unset, offline unless HF_HUB_OFFLINE says otherwise; a RERANKD_MODEL that
# is set (a hub id, or a folder on a mounted volume) always wins.
set -eu
baked=${RERANKD_BAKED_MODEL:-/models/baked}
if [ -z "${RERANKD_MODEL:-}" ] && [ -f "$baked/config.json" ]; then
    RERANKD_MODEL=$baked
    HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
    export RERANKD_MODEL HF_HUB_OFFLINE
fi
exec rerankd "$@"
