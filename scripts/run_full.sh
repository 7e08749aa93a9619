#!/usr/bin/env bash
# Set up the environment and run the whole pipeline on the embedded default (synthetic data, CPU ok).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export KEDRO_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
kedro run --pipelines=full "$@"
