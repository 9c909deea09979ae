#!/usr/bin/env bash
# One command to test: set up with dev extras and Debian's Chromium (browser tests), lint,
# run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
bash scripts/browser.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
