#!/usr/bin/env bash
# A Ray cluster on this machine for UNIFIED_AI_DEPLOYMENT=ray: a CPU head node and a worker
# node that declares one logical GPU and the `gpu` pool label (unified-ai/pool=gpu), as a
# GPU node of the KubeRay cluster in deploy/ray/raycluster.yaml does.
#   scripts/ray_cluster.sh up | status | gpu-down | gpu-up | down
# `up` prints the RAY_ADDRESS to export (the dashboard URL: jobs are submitted there).
# `gpu-down` kills the GPU node and everything running on it at once, as losing the machine
# would (its steps' processes included); `gpu-up` starts it again. `down` stops this cluster
# only: each node is a `ray start --block` in its own process group, recorded under the state
# folder, and stopped with its descendants, then any Ray process still naming this cluster's
# temp dir (`ray stop` would stop every Ray on the machine).
# Ports: RAY_GCS_PORT (6390), RAY_DASHBOARD_PORT (8265), RAY_GPU_NODE_AGENT_PORT (52375: two
# nodes on one IP need two dashboard agents, or the job logs of the GPU node cannot be read),
# RAY_CLIENT_PORT (10001). RAY_NODE_WAIT_S (300): how long a node may take to join on a busy
# host. State and logs under RAY_TEMP_DIR (/tmp/unified-ai-ray). Two
# clusters on one machine need other ports and another RAY_TEMP_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN=$(pwd)/.venv/bin
[ -x "$VENV_BIN/ray" ] || { echo "ray is not installed: run scripts/setup.sh dev (or pip install -e '.[ray]')" >&2; exit 2; }
# Each step's Ray job runs `dagster api execute_step` with the environment of the node it lands
# on, which is the environment `ray start` ran in: the venv must be first on PATH.
export PATH="$VENV_BIN:$PATH" RAY_USAGE_STATS_ENABLED=0
# Serve's throughput mode on both nodes, as the RayService's pods run (deploy/ray/rayservice.yaml,
# unified_assets/serving/deploy.py SERVE_NODE_ENV); a value already set wins.
export RAY_SERVE_THROUGHPUT_OPTIMIZED=${RAY_SERVE_THROUGHPUT_OPTIMIZED:-1}
GCS_PORT=${RAY_GCS_PORT:-6390}
DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
TEMP_DIR=${RAY_TEMP_DIR:-/tmp/unified-ai-ray}
ADDRESS="http://127.0.0.1:$DASHBOARD_PORT"
RUN="$TEMP_DIR/unified-ai"  # pid files and logs of the nodes this script started

node_pid() { [ -f "$RUN/$1.pid" ] && cat "$RUN/$1.pid" || true; }
node_alive() { local pid; pid=$(node_pid "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

descendants() {  # every process below $1, those in sessions of their own too (Ray jobs' steps)
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}

stop_node() {  # stop_node NAME SIGNAL: the node's `ray start --block`, its process group
  # (what it started, even once orphaned) and all below it (steps run in sessions of their own)
  local pid pids
  pid=$(node_pid "$1")
  [ -n "$pid" ] || return 0
  pids="$(descendants "$pid") $(pgrep -g "$pid" || true)"
  # shellcheck disable=SC2086
  kill "-$2" -- "-$pid" $pids 2>/dev/null || true
  if [ "$2" != KILL ]; then
    for _ in $(seq 1 20); do pgrep -g "$pid" >/dev/null || break; sleep 0.5; done
    # shellcheck disable=SC2086
    kill -KILL -- "-$pid" $pids 2>/dev/null || true
  fi
  rm -f "$RUN/$1.pid"
}

cluster_pids() {  # live Ray processes whose command line names this cluster's temp dir (the
  # path travels in the environment, so neither ps nor awk matches itself; -ww: whole lines
  # whatever COLUMNS says)
  ps -ww -eo pid=,stat=,args= | D="$TEMP_DIR" awk 'index($0, ENVIRON["D"]) && index($0, "/ray/") && $2 !~ /^Z/ {print $1}'
}

sweep() {  # what the nodes left behind (a worker that changed its group or outlived its
  # parent): TERM, then KILL, and wait until none is left, so `down` returns with the cluster gone
  local pids
  pids=$(cluster_pids)
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 20); do [ -n "$(cluster_pids)" ] || return 0; sleep 0.5; done
  # shellcheck disable=SC2046
  kill -KILL $(cluster_pids) 2>/dev/null || true
  for _ in $(seq 1 20); do [ -n "$(cluster_pids)" ] || return 0; sleep 0.5; done
  echo "still running after SIGKILL: $(cluster_pids)" >&2
}

wait_nodes() {  # wait_nodes N NAME: until the dashboard reports N live nodes; fails with the
  # log's tail if node NAME's `ray start` exits first (a port taken, a bad option)
  "$VENV_BIN/python" - "$ADDRESS" "$1" "$RUN" "$2" "$(node_pid "$2")" <<'EOF'
import json, os, sys, time, urllib.request
address, wanted, run, name, pid = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
deadline = time.monotonic() + float(os.environ.get("RAY_NODE_WAIT_S", "300"))
while time.monotonic() < deadline:
    try:
        os.kill(int(pid), 0)
    except OSError:
        tail = open(f"{run}/{name}.log").read().strip().splitlines()[-3:]
        sys.exit(f"the Ray {name} node did not start:\n  " + "\n  ".join(tail))
    try:
        with urllib.request.urlopen(f"{address}/api/v0/nodes?limit=100", timeout=5) as r:
            nodes = json.load(r)["data"]["result"]["result"]
        if sum(n["state"] == "ALIVE" for n in nodes) >= wanted:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(1)
sys.exit(f"the Ray cluster did not reach {wanted} live node(s) in time (RAY_NODE_WAIT_S); logs in {run}/*.log")
EOF
}

dashboard_nodes() {  # dashboard_nodes BEFORE: the live node ids (comma-separated), once one
  # that is not in BEFORE is alive (BEFORE empty: at once); fails after RAY_NODE_WAIT_S
  "$VENV_BIN/python" - "$ADDRESS" "$1" "$RUN" <<'EOF'
import json, os, sys, time, urllib.request
address, before, run = sys.argv[1], set(filter(None, sys.argv[2].split(","))), sys.argv[3]
deadline = time.monotonic() + float(os.environ.get("RAY_NODE_WAIT_S", "300"))
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"{address}/api/v0/nodes?limit=100", timeout=5) as r:
            alive = [n["node_id"] for n in json.load(r)["data"]["result"]["result"]
                     if n["state"] == "ALIVE"]
        if not before or set(alive) - before:
            print(",".join(alive))
            sys.exit(0)
    except (OSError, ValueError):  # a dropped connection, a cut answer: asked again
        pass
    time.sleep(1)
sys.exit(f"the Ray dashboard did not list a new live node in time (RAY_NODE_WAIT_S); log in {run}/gpu.log")
EOF
}

start_gpu_node() {
  # The worker's CPUs are logical: GPU steps run on it, CPU steps never (label selector).
  setsid "$VENV_BIN/ray" start --block --address="127.0.0.1:$GCS_PORT" --node-ip-address=127.0.0.1 \
    --num-cpus="${RAY_GPU_NODE_CPUS:-2}" --num-gpus=1 --labels="unified-ai/pool=gpu" \
    --object-store-memory=100000000 \
    --dashboard-agent-listen-port="${RAY_GPU_NODE_AGENT_PORT:-52375}" >"$RUN/gpu.log" 2>&1 &
  echo $! >"$RUN/gpu.pid"
}

case "${1:-}" in
  up)
    if node_alive head; then
      echo "Ray cluster already up (head pid $(node_pid head)). Dashboard $ADDRESS"
      exit 0
    fi
    mkdir -p "$RUN"
    setsid "$VENV_BIN/ray" start --block --head --node-ip-address=127.0.0.1 --port="$GCS_PORT" \
      --num-cpus="${RAY_HEAD_CPUS:-2}" --num-gpus=0 --ray-client-server-port="${RAY_CLIENT_PORT:-10001}" \
      --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
      --object-store-memory=200000000 --temp-dir="$TEMP_DIR" --disable-usage-stats \
      >"$RUN/head.log" 2>&1 &
    echo $! >"$RUN/head.pid"
    wait_nodes 1 head || { stop_node head KILL; exit 1; }
    start_gpu_node
    # Ray gives a starting node's raylet 30 s (fixed); a busy 2-core host can miss that once.
    if ! wait_nodes 2 gpu; then
      echo "the GPU node did not start; starting it once more" >&2
      stop_node gpu KILL
      start_gpu_node
      wait_nodes 2 gpu || { stop_node gpu KILL; stop_node head TERM; exit 1; }
    fi
    echo "Ray cluster up: CPU head + 1 GPU-pool worker (1 logical GPU). Dashboard $ADDRESS"
    echo "export UNIFIED_AI_DEPLOYMENT=ray RAY_ADDRESS=$ADDRESS"
    ;;
  gpu-down)
    node_alive gpu || { echo "no GPU node of this cluster is running" >&2; exit 1; }
    stop_node gpu KILL
    echo "GPU node killed (as a lost machine: no goodbye); Ray declares it dead within ~15 s"
    ;;
  gpu-up)
    node_alive head || { echo "the cluster is not up: run $0 up" >&2; exit 1; }
    if node_alive gpu; then echo "the GPU node is already up"; exit 0; fi
    # A new node id: the lost node may still count as alive until Ray's health checks end it.
    # Each poll retries until the deadline: a busy dashboard drops a connection now and then.
    before=$(dashboard_nodes "")
    start_gpu_node
    dashboard_nodes "${before:-none}" >/dev/null
    echo "GPU node up again"
    ;;
  down)
    stop_node gpu TERM
    stop_node head TERM
    sweep
    echo "Ray cluster stopped (this cluster's processes only)"
    ;;
  status)
    node_alive head || { echo "Ray cluster not running (no live head started by this script)"; exit 1; }
    ray status --address="127.0.0.1:$GCS_PORT" 2>/dev/null
    ;;
  *)
    echo "usage: $0 up|status|gpu-down|gpu-up|down" >&2
    exit 2
    ;;
esac
