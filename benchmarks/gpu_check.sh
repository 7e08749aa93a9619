#!/usr/bin/env bash
# GPU check (≤ 8 minutes on one GPU): ViT-B/16 at batch 512 in bf16, training img/s and MFU for FLYP,
# StarFT cached and StarFT online, eager and compiled; FLYP trained through the real loader from shards
# (CPU workers, GPU decode); shard loader img/s; one-pass evaluation img/s (benchmarks/gpu_check.py).
# MFU's peak defaults from the GPU's name (H100 SXM / H200 989, H100 PCIe 756). Arguments go to the script, e.g.
#   bash benchmarks/gpu_check.sh                      # on the GPU machine
#   bash benchmarks/gpu_check.sh --peak-tflops 312    # A100's dense bf16 peak
#   bash benchmarks/gpu_check.sh --dry                # CPU, tiny model, seconds (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export KEDRO_DISABLE_TELEMETRY=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "$@"
