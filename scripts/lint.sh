#!/usr/bin/env bash
# Lint, format check and type check (what CI runs before the tests). Assumes .venv exists (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
ruff check src tests benchmarks
ruff format --check src tests benchmarks
mypy
