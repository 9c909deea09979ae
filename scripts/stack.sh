#!/usr/bin/env bash
# The production stack on one machine, on loopback: PostgreSQL 15 (Dagster's run, event-log and
# schedule storage, MLflow's backend store, the decision store), an S3-compatible server (moto)
# with the project's bucket (landing zone, IO values, artifacts), an MLflow tracking server
# (Postgres backend, S3 artifacts, served artifacts), and Dagster as the Helm chart runs it: the
# code location as a gRPC server, dagster-daemon and dagster-webserver as separate processes on
# deploy/stack/dagster.yaml. The code runs the `kubernetes` settings path with the local
# executor (UNIFIED_AI_EXECUTOR=multiprocess); see "Production stack" in deploy/README.md.
#
#   bash scripts/stack.sh up       start everything, wait until each component answers
#   bash scripts/stack.sh status   what runs where (URL, port, pid, alive)
#   bash scripts/stack.sh down     stop exactly what `up` started (safe to run twice)
#   bash scripts/stack.sh restart NAME   stop and start one component (postgres, s3, mlflow,
#                                  grpc, daemon, webserver); `up` on a partly-up stack starts
#                                  only what is missing (a crashed daemon, say)
#
# State folder: $UNIFIED_AI_STACK_DIR, else $UNIFIED_AI_HOME/stack, else .unified_ai/stack.
# Ports (each: the given one, which must be free; else the default, or any free port if that
# is taken): PORT (webserver, 3300), GRPC_PORT (3330), MLFLOW_PORT (5300), S3_PORT (9300),
# PG_PORT (5433). UNIFIED_AI_POLICY: the base policy (default: the shipped one); the stack lays
# signed decisions and its local decider ($STACK_DECIDER, default `operator`) over it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${UNIFIED_AI_VENV:-$ROOT/.venv}
STATE=${UNIFIED_AI_STACK_DIR:-${UNIFIED_AI_HOME:-$ROOT/.unified_ai}/stack}
BUCKET=${UNIFIED_AI_S3_BUCKET:-unified-ai}
DECIDER=${STACK_DECIDER:-operator}
TIMEOUT=${STACK_TIMEOUT:-180}  # seconds each component gets to answer
# Start order; `down` stops in reverse. Postgres is managed by pg_ctl, the others by pid.
COMPONENTS=(postgres s3 mlflow grpc daemon webserver)
PG_USER=unified_ai
DATABASES=(dagster mlflow decisions)

say() { echo "stack: $*"; }
die() { echo "stack: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# processes: each component is started as its own process group (its pid is the group id), and
# recorded with its start time, so a pid reused by another program is never mistaken for ours.

start_time() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }

# A killed process whose parent has not reaped it yet is a zombie: dead, not alive.
zombie() { [ "$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $1}')" = Z ]; }

recorded_pid() { [ -f "$STATE/run/$1.pid" ] && awk '{print $1}' "$STATE/run/$1.pid" || true; }

alive() {  # alive NAME: the recorded process is running and is the one we started
  local pid recorded
  [ -f "$STATE/run/$1.pid" ] || return 1
  read -r pid recorded < "$STATE/run/$1.pid"
  [ -n "$pid" ] && [ "$(start_time "$pid")" = "$recorded" ] && ! zombie "$pid"
}

record() { echo "$2 $(start_time "$2")" > "$STATE/run/$1.pid"; }

descendants() {  # every process below $1 (a process that left its group is still found)
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}

launch() {  # launch NAME COMMAND...: in the background, its own process group, log in logs/
  local name=$1
  shift
  # Job control on: the job gets its own process group and keeps SIGINT/SIGTERM (a script's
  # background jobs otherwise start with SIGINT ignored, and Dagster maps SIGTERM to SIGINT's
  # handler, so the code server ignored both).
  set -m
  "$@" >> "$STATE/logs/$name.log" 2>&1 < /dev/null &  # appended: a restart keeps the history
  set +m
  record "$name" $!
}

launch_in_env() {  # launch_in_env NAME COMMAND...: launch it in the stack's env (write_env)
  local name=$1
  shift
  # bash execs the command: the recorded pid is the command's own.
  launch "$name" bash -c 'set -a; . "$1"; set +a; cd "$2"; shift 2; exec "$@"' _ \
    "$STATE/env" "$ROOT" "$@"
}

stop_processes() {  # TERM each named component's group and descendants together, KILL what
  # is left after 20 s. Only recorded processes that are still the ones we started.
  local name pid pids="" groups="" stopped=""
  for name in "$@"; do
    if alive "$name"; then
      pid=$(recorded_pid "$name")
      groups="$groups -$pid"
      pids="$pids $pid $(descendants "$pid")"
      stopped="$stopped $name($pid)"
    fi
    rm -f "$STATE/run/$name.pid"
  done
  [ -n "$pids" ] || return 0
  kill -TERM -- $groups 2>/dev/null || true
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 40); do
    kill -0 $pids 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- $groups 2>/dev/null || true
  kill -KILL $pids 2>/dev/null || true
  say "stopped$stopped"
}

sweep_stack_processes() {  # last, once every server is down: a run or step started while
  # Dagster went down, in a group of its own, still carries the stack's environment
  # (write_env): KILL it too. This script's own group (its pipelines, its caller) is skipped.
  local mark="UNIFIED_AI_STACK_DIR=$STATE" own pid pgid pids
  own=$(ps -o pgid= -p $$ | tr -d ' ')
  for _ in 1 2 3 4 5 6; do
    pids=""
    while read -r pid pgid; do
      [ "$pgid" != "$own" ] || continue
      { tr '\0' '\n' < "/proc/$pid/environ"; } 2>/dev/null | grep -qxF "$mark" && pids="$pids $pid"
    done < <(ps -eo pid=,pgid=)
    [ -n "$pids" ] || return 0
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  done
}

log_tail() { tail -n 40 "$STATE/logs/$1.log" 2>/dev/null | sed "s/^/  $1| /" >&2 || true; }

wait_for() {  # wait_for NAME CHECK...: until CHECK succeeds; the log tail if it never does
  local name=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@" > /dev/null 2>&1; do
    if [ "$name" != postgres ] && ! alive "$name"; then
      log_tail "$name"
      die "$name exited before it answered (log: $STATE/logs/$name.log)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      log_tail "$name"
      die "$name did not answer within $TIMEOUT s (log: $STATE/logs/$name.log)"
    fi
    sleep 0.5
  done
}

http_ok() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1")" = 200 ]; }

# ---------------------------------------------------------------------------------------------
# ports

port_taken() { (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

any_free_port() {
  "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

choose_port() {  # choose_port NAME GIVEN DEFAULT
  local name=$1 given=$2 default=$3
  if [ -n "$given" ]; then
    ! port_taken "$given" || die "port $given for $name is taken; choose another"
    echo "$given"
  elif port_taken "$default"; then
    any_free_port
  else
    echo "$default"
  fi
}

port_of() { cat "$STATE/run/$1.port" 2>/dev/null || true; }

# ---------------------------------------------------------------------------------------------
# PostgreSQL: initdb/pg_ctl as the `postgres` user when we are root (Postgres refuses to run as
# root), as ourselves otherwise; TCP on 127.0.0.1 only, no unix socket, password logins.

pg_bin() {
  local dir
  for dir in "${PG_BIN:-}" "$(dirname "$(command -v pg_ctl 2> /dev/null || echo /x/x)")" \
    /usr/lib/postgresql/15/bin; do
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return
    fi
  done
  die "initdb/pg_ctl not found (install PostgreSQL 15: apt-get install postgresql-15, or set PG_BIN)"
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_data() { echo "$STATE/pg/data"; }

pg_init() {
  local data
  data=$(pg_data)
  mkdir -p "$STATE/pg"
  if [ "$(id -u)" = 0 ]; then
    id postgres > /dev/null 2>&1 || die "no \`postgres\` user to run Postgres as (we are root)"
    chown postgres: "$STATE/pg" "$STATE/logs/postgres.log"
    as_pg test -x "$STATE/pg" ||
      die "the postgres user cannot reach $STATE/pg: make its parent folders traversable (chmod o+x) or choose another UNIFIED_AI_STACK_DIR"
  fi
  [ -f "$data/PG_VERSION" ] && return 0
  say "initdb $data"
  local pwfile="$STATE/pg/.superuser-password"
  (umask 077 && printf '%s\n' "$PG_SUPER_PASSWORD" > "$pwfile")
  [ "$(id -u)" = 0 ] && chown postgres: "$pwfile"
  as_pg "$PGBIN/initdb" -D "$data" -U postgres --pwfile="$pwfile" --auth=scram-sha-256 \
    -E UTF8 --locale=C > "$STATE/logs/initdb.log" 2>&1 || { log_tail initdb; die "initdb failed"; }
  rm -f "$pwfile"
  cat >> "$data/postgresql.conf" <<EOF
# scripts/stack.sh: loopback TCP only (the port is given at start), no unix socket
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
EOF
}

pg_running() { as_pg "$PGBIN/pg_ctl" -D "$(pg_data)" status > /dev/null 2>&1; }

pg_start() {
  local port=$1
  as_pg "$PGBIN/pg_ctl" -D "$(pg_data)" -l "$STATE/logs/postgres.log" -o "-p $port" -w \
    -t "$TIMEOUT" start > /dev/null || { log_tail postgres; die "Postgres did not start"; }
  head -n 1 "$(pg_data)/postmaster.pid" | { read -r pid; record postgres "$pid"; }
  echo "$port" > "$STATE/run/postgres.port"
  wait_for postgres pg_isready -q -h 127.0.0.1 -p "$port"
}

pg_sql() {  # pg_sql DB SQL: as the superuser, over TCP
  PGPASSWORD=$PG_SUPER_PASSWORD psql -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(port_of postgres)" \
    -U postgres -d "$1" -tAc "$2"
}

pg_databases() {  # our role and one database per user (idempotent)
  local db
  if [ -z "$(pg_sql postgres "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" ]; then
    pg_sql postgres "CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD'"
  fi
  for db in "${DATABASES[@]}"; do
    if [ -z "$(pg_sql postgres "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
      pg_sql postgres "CREATE DATABASE $db OWNER $PG_USER"
    fi
  done
}

pg_stop() {
  if [ -f "$(pg_data)/postmaster.pid" ] && pg_running; then
    as_pg "$PGBIN/pg_ctl" -D "$(pg_data)" -m fast -w -t 60 stop > /dev/null
    say "stopped postgres (pg_ctl stop)"
  fi
  rm -f "$STATE/run/postgres.pid"
}

# ---------------------------------------------------------------------------------------------
# secrets, decider key and policy (written once, kept across up/down; mode 600)

secrets() {
  if [ ! -f "$STATE/secrets" ]; then
    (umask 077 && "$VENV/bin/python" -c '
import secrets
print(f"PG_SUPER_PASSWORD={secrets.token_hex(16)}")
print(f"PG_PASSWORD={secrets.token_hex(16)}")
print(f"LEDGER_KEY={secrets.token_hex(32)}")' > "$STATE/secrets")
  fi
  # shellcheck disable=SC1091
  . "$STATE/secrets"
}

decider_policy() {
  # A key pair for the local decider, and the policy the code loads: the base policy with
  # signatures required and that decider as the one approver and rollback person (the
  # kubernetes path refuses a policy that allows unsigned decisions).
  "$VENV/bin/python" - "$STATE" "$DECIDER" "${UNIFIED_AI_POLICY:-}" <<'EOF'
import sys
from pathlib import Path

import yaml

from unified_assets.policy import DEFAULT_POLICY_PATH, load_policy
from unified_assets.services.identity import load_private_key, public_key_text, write_key_pair

state, decider, base = Path(sys.argv[1]), sys.argv[2], sys.argv[3] or str(DEFAULT_POLICY_PATH)
key = state / "keys" / f"{decider}.key"
public = public_key_text(load_private_key(key)) if key.exists() else write_key_pair(decider, key.parent)[1]
policy = yaml.safe_load(Path(base).read_text())
policy["approval"].update(require_signature=True, approvers=[decider], groups={},
                          keys={decider: public})
policy.setdefault("rollback", {})["by"] = [decider]
out = state / "policy.yaml"
out.write_text(f"# written by scripts/stack.sh from {base}: signed decisions by {decider}\n"
               + yaml.safe_dump(policy, sort_keys=False))
load_policy(out)  # refuse to start on a policy the code location would refuse
EOF
}

# ---------------------------------------------------------------------------------------------
# the code's environment: the kubernetes settings path, pointed at the stack

write_env() {
  # +psycopg2: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed
  # (dagster-postgres brings psycopg2).
  local pg="postgresql+psycopg2://$PG_USER:$PG_PASSWORD@127.0.0.1:$(port_of postgres)"
  local s3="http://127.0.0.1:$(port_of s3)" mlflow="http://127.0.0.1:$(port_of mlflow)"
  (
    umask 077
    {
      echo "# written by scripts/stack.sh up: the environment of the stack's Dagster processes"
      echo "# (and of the CLI: set -a; . $STATE/env; set +a). Holds secrets: mode 600."
      printf 'export %s=%q\n' \
        UNIFIED_AI_DEPLOYMENT kubernetes \
        UNIFIED_AI_EXECUTOR multiprocess \
        UNIFIED_AI_HOME "$STATE/home" \
        UNIFIED_AI_POLICY "$STATE/policy.yaml" \
        UNIFIED_AI_DECISIONS_URL "$pg/decisions" \
        UNIFIED_AI_LEDGER_KEY "$LEDGER_KEY" \
        MLFLOW_TRACKING_URI "$mlflow" \
        UNIFIED_AI_MLFLOW_UI_URL "$mlflow" \
        UNIFIED_AI_S3_BUCKET "$BUCKET" \
        UNIFIED_AI_S3_ENDPOINT_URL "$s3" \
        UNIFIED_AI_LANDING_URI "s3://$BUCKET/landing" \
        UNIFIED_AI_ARTIFACT_ROOT "s3://$BUCKET/artifacts" \
        AWS_ACCESS_KEY_ID testing \
        AWS_SECRET_ACCESS_KEY testing \
        AWS_DEFAULT_REGION us-east-1 \
        UNIFIED_AI_DAGSTER_URL "http://127.0.0.1:$(port_of webserver)" \
        DAGSTER_HOME "$STATE/dagster_home" \
        DAGSTER_PG_HOST 127.0.0.1 \
        DAGSTER_PG_PORT "$(port_of postgres)" \
        DAGSTER_PG_USERNAME "$PG_USER" \
        DAGSTER_PG_PASSWORD "$PG_PASSWORD" \
        DAGSTER_PG_DB dagster \
        UNIFIED_AI_STACK_GRPC_PORT "$(port_of grpc)" \
        UNIFIED_AI_STACK_DIR "$STATE"
      # Passed through when set: the user's dataset and candidates, the landing sensor's retry
      # backoff, and how long MLflow's client retries a server that does not answer
      # (MLflow's defaults: 7 retries, backoff factor 2, minutes in all).
      for var in UNIFIED_AI_DATASET_SPEC UNIFIED_AI_CANDIDATES UNIFIED_AI_INGEST_RETRY_BACKOFF_S \
        MLFLOW_HTTP_REQUEST_MAX_RETRIES MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR MLFLOW_HTTP_REQUEST_TIMEOUT; do
        [ -z "${!var:-}" ] || printf 'export %s=%q\n' "$var" "${!var}"
      done
    } > "$STATE/env"
  )
}

with_env() {  # with_env COMMAND...: run it in the stack's environment, from the repository
  (
    set -a
    # shellcheck disable=SC1091
    . "$STATE/env"
    set +a
    cd "$ROOT"
    exec "$@"
  )
}

# ---------------------------------------------------------------------------------------------
# commands

start_component() {  # start_component NAME: start one component on its recorded port
  case $1 in
    postgres)
      pg_init
      pg_start "$(port_of postgres)"
      pg_databases
      say "postgres on 127.0.0.1:$(port_of postgres)"
      ;;
    s3)
      launch s3 "$VENV/bin/moto_server" -H 127.0.0.1 -p "$(port_of s3)"
      wait_for s3 http_ok "http://127.0.0.1:$(port_of s3)/"
      # moto checks no signature: a plain PUT creates the bucket (an existing one is kept).
      curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$(port_of s3)/$BUCKET"
      say "s3 (moto, in memory) on http://127.0.0.1:$(port_of s3), bucket $BUCKET"
      ;;
    mlflow)
      # The backend store URI holds a password: passed in the environment, not the command line.
      launch mlflow env MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://$PG_USER:$PG_PASSWORD@127.0.0.1:$(port_of postgres)/mlflow" \
        MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$(port_of s3)" AWS_ACCESS_KEY_ID=testing \
        AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
        "$VENV/bin/mlflow" server --serve-artifacts --artifacts-destination "s3://$BUCKET/mlflow" \
        --host 127.0.0.1 --port "$(port_of mlflow)" --workers 1
      wait_for mlflow http_ok "http://127.0.0.1:$(port_of mlflow)/health"
      say "mlflow on http://127.0.0.1:$(port_of mlflow)"
      ;;
    grpc)
      cp "$ROOT/deploy/stack/dagster.yaml" "$STATE/dagster_home/dagster.yaml"
      launch_in_env grpc "$VENV/bin/dagster" api grpc -m unified_assets.definitions \
        -h 127.0.0.1 -p "$(port_of grpc)"
      wait_for grpc "$VENV/bin/dagster" api grpc-health-check -h 127.0.0.1 -p "$(port_of grpc)"
      say "code server on 127.0.0.1:$(port_of grpc)"
      ;;
    daemon)
      launch_in_env daemon "$VENV/bin/dagster-daemon" run -w "$ROOT/deploy/stack/workspace.yaml"
      wait_for daemon with_env "$VENV/bin/dagster-daemon" liveness-check
      say "daemon running (sensors, run queue, run monitoring)"
      ;;
    webserver)
      launch_in_env webserver "$VENV/bin/dagster-webserver" -h 127.0.0.1 -p "$(port_of webserver)" \
        -w "$ROOT/deploy/stack/workspace.yaml"
      wait_for webserver http_ok "http://127.0.0.1:$(port_of webserver)/server_info"
      say "webserver on http://127.0.0.1:$(port_of webserver)"
      ;;
  esac
}

preflight() {
  [ -x "$VENV/bin/dagster" ] || die "no project venv at $VENV (run: bash scripts/setup.sh dev)"
  [ -x "$VENV/bin/moto_server" ] || die "moto's server is missing (run: bash scripts/setup.sh dev)"
  command -v psql > /dev/null || die "psql not found (apt-get install postgresql-client-15)"
  PGBIN=$(pg_bin)
}

up() {
  local name alive_count=0 missing=()
  mkdir -p "$STATE"/{run,logs,home,dagster_home,keys}
  for name in "${COMPONENTS[@]}"; do
    if alive "$name"; then alive_count=$((alive_count + 1)); else missing+=("$name"); fi
  done
  if [ "$alive_count" = "${#COMPONENTS[@]}" ]; then
    say "already up ($STATE)"
    status
    return 0
  fi
  preflight
  if [ "$alive_count" -gt 0 ]; then
    # Partly up (a component crashed or was killed): start what is missing, on the ports and
    # with the secrets and env the running components already use; nothing running is touched.
    secrets
    if [[ " ${missing[*]} " == *" s3 "* ]]; then
      say "s3 restarts empty: moto keeps its bucket in memory (landed batches, IO values and MLflow artifacts are gone)"
    fi
    for name in "${missing[@]}"; do start_component "$name"; done
    say "up (restarted: ${missing[*]})"
    status
    return 0
  fi
  # A failed `up` stops what it started: no half stack is left behind.
  trap 'if [ "${UP_DONE:-}" != 1 ]; then echo "stack: up failed; stopping what started" >&2; down > /dev/null 2>&1 || true; fi' EXIT

  choose_port postgres "${PG_PORT:-}" 5433 > "$STATE/run/postgres.port"
  choose_port s3 "${S3_PORT:-}" 9300 > "$STATE/run/s3.port"
  choose_port mlflow "${MLFLOW_PORT:-}" 5300 > "$STATE/run/mlflow.port"
  choose_port grpc "${GRPC_PORT:-}" 3330 > "$STATE/run/grpc.port"
  choose_port webserver "${PORT:-}" 3300 > "$STATE/run/webserver.port"
  secrets
  decider_policy
  touch "$STATE/logs/postgres.log"

  start_component postgres
  write_env
  for name in s3 mlflow grpc daemon webserver; do start_component "$name"; done
  UP_DONE=1
  say "up"
  status
}

restart() {  # restart NAME: stop one component (as `down` would) and start it again
  local name=${1:-}
  [[ " ${COMPONENTS[*]} " == *" $name "* ]] ||
    die "restart what? '${name}' is not a component; one of: ${COMPONENTS[*]}"
  [ -f "$STATE/env" ] || die "not set up ($STATE): \`bash scripts/stack.sh up\` first"
  preflight
  secrets
  if [ "$name" = postgres ]; then
    pg_stop
  else
    stop_processes "$name"
  fi
  [ "$name" != s3 ] || say "s3 restarts empty: moto keeps its bucket in memory"
  start_component "$name"
  status > /dev/null || true
  say "restarted $name"
}

status() {
  local name pid state up=0 where down=""
  [ -d "$STATE/run" ] || { say "not set up ($STATE)"; return 3; }
  echo "production stack in $STATE"
  printf '%-10s %-8s %-6s %s\n' component pid alive where
  for name in "${COMPONENTS[@]}"; do
    pid=$(recorded_pid "$name")
    if alive "$name"; then state=yes; up=$((up + 1)); else state=no; down="$down $name"; fi
    case $name in
      postgres) where="127.0.0.1:$(port_of postgres) (databases: ${DATABASES[*]})" ;;
      s3) where="http://127.0.0.1:$(port_of s3) bucket $BUCKET (moto: in memory, lost on down)" ;;
      mlflow) where="http://127.0.0.1:$(port_of mlflow)" ;;
      grpc) where="127.0.0.1:$(port_of grpc) (code location unified_ai, gRPC)" ;;
      daemon) where="sensors, schedules, run queue, run monitoring" ;;
      webserver) where="http://127.0.0.1:$(port_of webserver)" ;;
    esac
    printf '%-10s %-8s %-6s %s\n' "$name" "${pid:--}" "$state" "$where"
  done
  echo "logs: $STATE/logs/<component>.log; env: set -a; . $STATE/env; set +a"
  if [ "$up" = 0 ]; then
    echo "the stack is down: \`bash scripts/stack.sh up\` starts it (its data and keys are kept)"
    return 3
  fi
  echo "landing zone: s3://$BUCKET/landing/ (labels: landing/labels/) at endpoint http://127.0.0.1:$(port_of s3), keys testing/testing"
  echo "approve (signed by the local decider $DECIDER):"
  echo "  (set -a; . $STATE/env; set +a; UNIFIED_AI_SIGNING_KEY=$STATE/keys/$DECIDER.key \\"
  echo "   $VENV/bin/unified-ai approve VERSION --by $DECIDER --reason '...')"
  if [ -n "$down" ]; then
    echo "down:$down; \`bash scripts/stack.sh up\` restarts them (the others keep running)"
    return 1
  fi
}

down() {
  [ -d "$STATE/run" ] || { say "nothing to stop ($STATE)"; return 0; }
  local name running=""
  for name in "${COMPONENTS[@]}"; do
    ! alive "$name" || running="$running $name"
  done
  if [ -f "$(pg_data)/PG_VERSION" ]; then
    PGBIN=$(pg_bin)
    ! pg_running || running="$running postgres"
  fi
  [ -n "$running" ] || { say "already down ($STATE); nothing was running"; return 0; }
  # Dagster first (runs are processes of the code server: they stop with it), then the
  # servers it writes to, Postgres last.
  stop_processes webserver daemon grpc
  stop_processes mlflow s3
  [ ! -f "$(pg_data)/PG_VERSION" ] || pg_stop
  sweep_stack_processes
  say "down (state kept in $STATE; S3 contents are gone with moto)"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  restart) restart "${2:-}" ;;
  *) echo "usage: bash scripts/stack.sh up|down|status|restart COMPONENT" >&2; exit 2 ;;
esac
