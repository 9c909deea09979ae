#!/usr/bin/env bash
# One command to run it: set up, seed the landing zone, start the MLflow UI (models, runs and
# the evaluation and drift reports the Dagster UI links to) and `dagster dev` on embedded
# defaults (sqlite instance under .unified_ai/, MLflow on sqlite, local files).
# PORT (default 3000) is the Dagster UI's port, MLFLOW_PORT (default 5000) the MLflow UI's.
# Ctrl-C stops both: the runs in progress end canceled (resumed at the next start), then
# `dagster dev` stops, and the MLflow UI with it, however it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export UNIFIED_AI_HOME=${UNIFIED_AI_HOME:-$PWD/.unified_ai}
mkdir -p "$UNIFIED_AI_HOME"
UNIFIED_AI_HOME=$(cd "$UNIFIED_AI_HOME" && pwd)  # absolute: the same store from every process
export DAGSTER_HOME=${DAGSTER_HOME:-$UNIFIED_AI_HOME/dagster_home}
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp deploy/local/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
if [ -z "${UNIFIED_AI_DATASET_SPEC:-}" ] && ! ls "$UNIFIED_AI_HOME"/landing/*.parquet >/dev/null 2>&1; then
  .venv/bin/unified-ai generate --out "$UNIFIED_AI_HOME/landing" --batches 6 --rows 4000
fi

# Run processes and the training run's forkserver fork from a warm server that imported
# Dagster, MLflow, scikit-learn and torch once (unified_assets/local_warm.py); "off": each
# starts as a fresh interpreter.
# That server ends soon after this command does (it serves until this shell is gone).
export UNIFIED_AI_LOCAL_WARM=${UNIFIED_AI_LOCAL_WARM:-on} UNIFIED_AI_WARM_OWNER=$$
PORT=${PORT:-3000}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
# Report links in the Dagster UI point here (unified_assets/settings.py).
export UNIFIED_AI_MLFLOW_UI_URL=${UNIFIED_AI_MLFLOW_UI_URL:-http://127.0.0.1:$MLFLOW_PORT}
# The tracking store and artifact root exactly as the code location computes them.
{ read -r TRACKING_URI; read -r ARTIFACT_ROOT; } < <(.venv/bin/python -c '
from unified_assets.settings import load_settings
s = load_settings()
print(s.mlflow_tracking_uri); print(s.mlflow_artifact_location)')
FRESH_STORE=$([ -f "$UNIFIED_AI_HOME/mlflow.db" ] && echo no || echo yes)
if [ "$FRESH_STORE" = yes ] && [ "$TRACKING_URI" = "sqlite:///$UNIFIED_AI_HOME/mlflow.db" ] \
    && [ -f .venv/mlflow-store-template.db ]; then
  # The empty store scripts/setup.sh made for this MLflow version, its Default experiment's
  # artifacts under this state folder's artifact root.
  .venv/bin/python - "$UNIFIED_AI_HOME/mlflow.db" "$ARTIFACT_ROOT" <<'EOF'
import shutil, sqlite3, sys
store, root = sys.argv[1:]
shutil.copyfile(".venv/mlflow-store-template.db", store + ".tmp")
with sqlite3.connect(store + ".tmp") as conn:
    conn.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                 (root.rstrip("/") + "/0",))
shutil.move(store + ".tmp", store)
EOF
  FRESH_STORE=no
fi
MLFLOW_LOG="$UNIFIED_AI_HOME/mlflow-ui.log"
if .venv/bin/python -c "import socket,sys; sys.exit(socket.socket().connect_ex(('127.0.0.1', $MLFLOW_PORT)) != 0)"; then
  echo "warning: port $MLFLOW_PORT is taken; the MLflow UI will not start (choose another: MLFLOW_PORT=5001)" >&2
fi
# No job runner (it is for GenAI jobs, and a second process to stop); one worker is plenty.
# On an existing store the MLflow UI starts once the Dagster UI answers: starting both at once
# on two cores delayed the Dagster UI by 4.5-5.6 s (bench/RESULTS.md), and nothing in Dagster needs
# the MLflow UI (the code location reads and writes the store itself; people open its links).
# A new store without the template still starts it first (below, it creates the tables).
DEV_PID=$$
(
  if [ "$FRESH_STORE" = no ]; then
    .venv/bin/python - "$PORT" "$DEV_PID" <<'EOF' || exit 0  # dagster dev exited first
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
local = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
deadline = time.monotonic() + 600  # then start it anyway
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)  # dagster dev is gone: no MLflow UI
    try:
        with local.open(f"http://127.0.0.1:{port}/server_info", timeout=2):
            break
    except OSError:
        time.sleep(0.5)
EOF
  fi
  # At a lower CPU priority (nice 10): the lifecycle's runs first, the viewer when cores are
  # free. Sampled during the first champion, its start took 7 s of CPU on two cores while the
  # first runs were starting (bench/RESULTS.md).
  # No usage data sent (as the code location: resources/mlflow_registry.py), unless set.
  MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true} \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false exec nice -n 10 .venv/bin/mlflow server \
    --backend-store-uri "$TRACKING_URI" --default-artifact-root "$ARTIFACT_ROOT" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 >"$MLFLOW_LOG" 2>&1
) &
MLFLOW_PID=$!
# Until `dagster dev` starts below, a failing step stops the MLflow UI with this script...
trap 'kill "$MLFLOW_PID" 2>/dev/null || true' EXIT
# ...after that, a watcher stops the MLflow UI once this script has exited (after `dagster
# dev`: Ctrl-C, a signal, a crash), however it exits.
( while kill -0 "$DEV_PID" 2>/dev/null; do sleep 2; done; kill "$MLFLOW_PID" 2>/dev/null ) &

if [ "$FRESH_STORE" = yes ]; then
  # A new store: let the MLflow server create its tables before the code location touches it
  # (two processes migrating one sqlite file at once can fail).
  .venv/bin/python - "$MLFLOW_PORT" "$MLFLOW_PID" <<'EOF' || echo "warning: the MLflow UI did not start; see $MLFLOW_LOG" >&2
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
local = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
deadline = time.monotonic() + 180
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with local.open(f"http://127.0.0.1:{port}/health", timeout=2):
            sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
EOF
fi
echo "Dagster UI: http://127.0.0.1:$PORT  (state in $UNIFIED_AI_HOME)"
echo "MLflow UI:  $UNIFIED_AI_MLFLOW_UI_URL  (reports, runs, models; log in $MLFLOW_LOG)"
trap - EXIT
# Runs this script stopped last time (Ctrl-C, below) resume: their re-executions, queued and
# held at the stop, are released (unified_assets/run_stop.py). Only on an instance with runs.
RESUME_PID=
if [ -f "$DAGSTER_HOME/history/runs.db" ]; then
  nice -n 10 .venv/bin/unified-ai runs resume --url "http://127.0.0.1:$PORT" --wait 600 &
  RESUME_PID=$!
fi
# `dagster dev` gets a process group of its own (job control on while it starts), so Ctrl-C,
# which a terminal sends to its foreground group, reaches this script first: the runs in
# progress are canceled, tagged why (a stop, not a failure: no red run, no incident), and only
# then is `dagster dev` signalled as Ctrl-C used to. A second Ctrl-C stops it at once.
# Its SIGINT is reset to the default first: started as `bash scripts/dev.sh &` from another
# script, this shell ignores SIGINT, every child would inherit that, and the stop below (and
# `dagster dev`'s own shutdown of its processes) would be ignored for good.
set -m
.venv/bin/python -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 \
  -p "$PORT" "$@" &
DAGSTER_PID=$!
set +m
# Should this script be killed outright (SIGKILL), `dagster dev` still stops with it.
setsid bash -c 'while kill -0 "$0" 2>/dev/null; do sleep 2; done; kill -INT -- -"$1" 2>/dev/null' \
  "$$" "$DAGSTER_PID" </dev/null >/dev/null 2>&1 &
STOPPED=
stop() {  # $1: what stopped it; $2: the exit status that says so
  trap 'kill -INT -- -"$DAGSTER_PID" 2>/dev/null' INT TERM
  STOPPED=$2
  [ -z "$RESUME_PID" ] || kill "$RESUME_PID" 2>/dev/null || true
  echo "unified-ai: stopping: runs in progress end canceled and resume at the next start" \
    "(Ctrl-C again: stop now)" >&2
  # In the background (so it ignores SIGINT: a second Ctrl-C interrupts the `wait`, not it,
  # and the trap above stops `dagster dev` at once while it finishes what it can).
  .venv/bin/unified-ai runs stop --url "http://127.0.0.1:$PORT" \
    --reason "scripts/dev.sh ($1 at $(date -u +%FT%TZ))" >&2 &
  STOP_PID=$!
  wait "$STOP_PID" || true
  kill -INT -- -"$DAGSTER_PID" 2>/dev/null || true
}
trap 'stop Ctrl-C 130' INT
trap 'stop SIGTERM 143' TERM
status=0
while kill -0 "$DAGSTER_PID" 2>/dev/null; do
  wait "$DAGSTER_PID" && status=0 || status=$?
done
# A stop a second Ctrl-C cut short has not necessarily ended: its last lines come before ours.
while [ -n "${STOP_PID:-}" ] && kill -0 "$STOP_PID" 2>/dev/null; do wait "$STOP_PID" || true; done
exit "${STOPPED:-$status}"
