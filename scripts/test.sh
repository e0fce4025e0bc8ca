#!/bin/bash
# Set up (idempotently) and run the whole test suite: linters, unit tests, integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check isobox tests bench
echo "== mypy"; mypy isobox
echo "== pytest"; exec pytest -q -ra "$@"
