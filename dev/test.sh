#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (unit + integration against real Airflow).
#   bash dev/test.sh [PYTEST_ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh
exec .venv/bin/python -m pytest "$@"
