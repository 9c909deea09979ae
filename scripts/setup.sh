#!/usr/bin/env bash
# Create .venv and install the project. torch==2.13.0 goes first: on our machines pip takes
# it from a local CPU wheel, and the project range then pulls no multi-GB CUDA build.
# Idempotent: re-runs only when pyproject.toml changed. Usage: scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
extras=${1:-}
# The run command's stamp names its extra: a checkout installed before the `ray` extra was
# part of it installs once more.
stamp=.venv/.installed-${extras:-base-ray}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# A dev install holds the base install: the run command after the test command installs nothing.
if [ -z "$extras" ] && [ -f .venv/.installed-dev ] && [ ! pyproject.toml -nt .venv/.installed-dev ]; then
  stamp=.venv/.installed-dev
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  if [ "$extras" = dev ]; then
    .venv/bin/python -m pip install --quiet -e ".[dev]"
  else
    # The run command's install: with the `ray` extra, so serving (Ray Serve) and the Ray
    # deployment work as the README shows; the code location imports Ray only when used.
    .venv/bin/python -m pip install --quiet -e ".[ray]"
  fi
  touch "$stamp"
fi
# An empty MLflow store for this install's MLflow version: scripts/dev.sh copies it into a new
# state folder in milliseconds, where MLflow's own migrations take 5 to 15 s on every reset.
template=.venv/mlflow-store-template.db
if [ ! -f "$template" ] || [ "$stamp" -nt "$template" ]; then
  rm -f "$template" "$template.tmp"
  .venv/bin/python -c 'import sys; from mlflow import MlflowClient
uri = "sqlite:///" + sys.argv[1]; MlflowClient(uri, uri).search_experiments()' \
    "$PWD/$template.tmp" >/dev/null 2>&1 && mv "$template.tmp" "$template"
fi
