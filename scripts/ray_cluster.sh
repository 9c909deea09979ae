#!/usr/bin/env bash
# A Ray cluster on this machine for UNIFIED_AI_DEPLOYMENT=ray: a CPU head node and a worker
# node that declares one logical GPU and the `gpu` pool label (unified-ai/pool=gpu), as a
# GPU node of the KubeRay cluster in deploy/ray/raycluster.yaml does.
#   scripts/ray_cluster.sh up | down | status
# `up` prints the RAY_ADDRESS to export (the dashboard URL: jobs are submitted there).
# Ports: RAY_GCS_PORT (6390), RAY_DASHBOARD_PORT (8265), RAY_GPU_NODE_AGENT_PORT (52375: two nodes
# on one IP need two dashboard agents, or the job logs of the GPU node cannot be read). State under RAY_TEMP_DIR
# (/tmp/unified-ai-ray). `down` stops the Ray processes started by `ray start` on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN=$(pwd)/.venv/bin
[ -x "$VENV_BIN/ray" ] || { echo "ray is not installed: run scripts/setup.sh dev (or pip install -e '.[ray]')" >&2; exit 2; }
# Each step's Ray job runs `dagster api execute_step` with the environment of the node it lands
# on, which is the environment `ray start` ran in: the venv must be first on PATH.
export PATH="$VENV_BIN:$PATH" RAY_USAGE_STATS_ENABLED=0
GCS_PORT=${RAY_GCS_PORT:-6390}
DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
TEMP_DIR=${RAY_TEMP_DIR:-/tmp/unified-ai-ray}
ADDRESS="http://127.0.0.1:$DASHBOARD_PORT"

case "${1:-}" in
  up)
    mkdir -p "$TEMP_DIR"
    ray start --head --node-ip-address=127.0.0.1 --port="$GCS_PORT" \
      --num-cpus="${RAY_HEAD_CPUS:-2}" --num-gpus=0 \
      --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
      --object-store-memory=200000000 --temp-dir="$TEMP_DIR" --disable-usage-stats >/dev/null
    # The worker's CPUs are logical: GPU steps run on it, CPU steps never (label selector).
    ray start --address="127.0.0.1:$GCS_PORT" --node-ip-address=127.0.0.1 \
      --num-cpus="${RAY_GPU_NODE_CPUS:-2}" --num-gpus=1 --labels="unified-ai/pool=gpu" \
      --object-store-memory=100000000 --dashboard-agent-listen-port="${RAY_GPU_NODE_AGENT_PORT:-52375}" >/dev/null
    echo "Ray cluster up: CPU head + 1 GPU-pool worker (1 logical GPU). Dashboard $ADDRESS"
    echo "export UNIFIED_AI_DEPLOYMENT=ray RAY_ADDRESS=$ADDRESS"
    ;;
  down)
    ray stop --force >/dev/null 2>&1 || true
    echo "Ray cluster stopped"
    ;;
  status)
    ray status --address="127.0.0.1:$GCS_PORT"
    ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
