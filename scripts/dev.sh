#!/usr/bin/env bash
# One command to run it: set up, seed the landing zone, start `dagster dev` on embedded
# defaults (sqlite instance under .unified_ai/, MLflow on sqlite, local files).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export UNIFIED_AI_HOME=${UNIFIED_AI_HOME:-$PWD/.unified_ai}
export DAGSTER_HOME=${DAGSTER_HOME:-$UNIFIED_AI_HOME/dagster_home}
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp deploy/local/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
if [ -z "${UNIFIED_AI_DATASET_SPEC:-}" ] && ! ls "$UNIFIED_AI_HOME"/landing/*.parquet >/dev/null 2>&1; then
  .venv/bin/unified-ai generate --out "$UNIFIED_AI_HOME/landing" --batches 6 --rows 4000
fi
echo "Dagster UI: http://127.0.0.1:${PORT:-3000}  (state in $UNIFIED_AI_HOME)"
exec .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p "${PORT:-3000}" "$@"
