#!/usr/bin/env bash
# One command to test: set up with dev extras and Debian's Chromium (browser tests), lint,
# run the whole suite: on two pytest-xdist workers, a module per worker at a time (addopts in
# pyproject.toml; `bash scripts/test.sh -n 0` for one process, `-m "not slow"` to leave out the
# full-lifecycle scenarios).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
bash scripts/browser.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
