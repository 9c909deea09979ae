#!/usr/bin/env bash
# One command to test: set up with dev extras, lint, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
