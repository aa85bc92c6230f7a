#!/usr/bin/env bash
# Set everything up (system packages, .venv), then run the gates: ruff, mypy --strict, the
# whole test suite under coverage (subprocesses too) with its floor, and the device-runtime
# figure. scripts/check says what each gate is and how to switch one on or off.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec bash scripts/check "$@"
