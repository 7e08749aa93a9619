#!/usr/bin/env bash
# Set up the environment and run the whole test suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export KEDRO_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
# Headless Chromium (Debian's package) for the kedro-viz browser test; installed once.
if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }
fi
python -m pytest "$@"
