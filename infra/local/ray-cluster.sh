#!/usr/bin/env bash
# A real two-node Ray cluster on this machine, on loopback only: a head (dashboard on 127.0.0.1,
# token auth) and one worker node joined to it. Used by the tests and for trying `ray job submit`.
#
#   infra/local/ray-cluster.sh start DIR [HEAD_CPUS] [WORKER_CPUS]   # writes DIR/cluster.env
#   source DIR/cluster.env && ray job submit --working-dir . -- python -m clipline.jobs.run --config JOB.yaml
#   infra/local/ray-cluster.sh stop DIR                                # stops exactly the nodes it started
#
# Each node runs as `ray start --block`, whose process stops that node's Ray processes when it
# receives SIGTERM; `stop` signals those pids only, never every Ray on the machine.
set -euo pipefail

command=${1:?usage: ray-cluster.sh start|stop DIR}
dir=${2:?usage: ray-cluster.sh start|stop DIR}
ray_bin=${RAY_BIN:-ray}
python_bin=${PYTHON_BIN:-python3}

free_port() {
  "$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Each node's agents get free ports: the defaults (52365, ...) collide with any other Ray on the
# machine, and a head whose job agent cannot bind answers "No available agent" to every submission.
agent_ports() {
  echo "--dashboard-agent-listen-port=$(free_port) --dashboard-agent-grpc-port=$(free_port)" \
    "--runtime-env-agent-port=$(free_port) --metrics-export-port=$(free_port)"
}

wait_for_nodes() {
  local want=$1 deadline=$((SECONDS + 120))
  until [ "$("$python_bin" - "$RAY_GCS_ADDRESS" <<'PY' 2>/dev/null
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
print(sum(1 for node in ray.nodes() if node["Alive"]))
PY
)" = "$want" ]; do
    if [ $SECONDS -ge $deadline ]; then
      echo "ray-cluster: timed out waiting for $want nodes; logs in $dir" >&2
      return 1
    fi
    sleep 2
  done
}

start() {
  local head_cpus=${1:-2} worker_cpus=${2:-2}
  mkdir -p "$dir"
  [ -s "$dir/auth_token" ] || "$python_bin" -c 'import secrets; print(secrets.token_hex(32))' > "$dir/auth_token"
  chmod 600 "$dir/auth_token"
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$dir/auth_token"
  local gcs_port dashboard_port
  gcs_port=$(free_port)
  dashboard_port=$(free_port)
  export RAY_GCS_ADDRESS="127.0.0.1:$gcs_port"
  # shellcheck disable=SC2046
  "$ray_bin" start --head --block --node-ip-address=127.0.0.1 --port="$gcs_port" \
    --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" --num-cpus="$head_cpus" \
    $(agent_ports) --disable-usage-stats >"$dir/head.log" 2>&1 &
  echo $! >"$dir/head.pid"
  wait_for_nodes 1
  # The worker node gets its own temp dir, as a second machine would: sharing the head's, its
  # runtime-env agent re-unpacks the job's working_dir under the running driver (its cwd vanishes).
  mkdir -p "$dir/w"
  # shellcheck disable=SC2046
  "$ray_bin" start --block --address="$RAY_GCS_ADDRESS" --node-ip-address=127.0.0.1 --temp-dir="$dir/w" \
    --num-cpus="$worker_cpus" $(agent_ports) --disable-usage-stats >"$dir/worker.log" 2>&1 &
  echo $! >"$dir/worker.pid"
  wait_for_nodes 2
  cat >"$dir/cluster.env" <<ENV
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$dir/auth_token
export RAY_GCS_ADDRESS=$RAY_GCS_ADDRESS
export RAY_ADDRESS=http://127.0.0.1:$dashboard_port
ENV
  echo "ray-cluster: head $RAY_GCS_ADDRESS, dashboard http://127.0.0.1:$dashboard_port, 2 nodes; env in $dir/cluster.env"
}

stop_pid() {
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$pidfile"
}

case "$command" in
  start) shift 2; start "$@" ;;
  stop)
    stop_pid "$dir/worker.pid"
    stop_pid "$dir/head.pid"
    # Forget this cluster as the machine's "current" one, so a later ray.init() does not try it.
    if [ -f "$dir/cluster.env" ] && [ -f /tmp/ray/ray_current_cluster ]; then
      port=$(sed -n 's/^export RAY_GCS_ADDRESS=.*:\([0-9]*\)$/\1/p' "$dir/cluster.env")
      grep -q ":$port\$" /tmp/ray/ray_current_cluster && rm -f /tmp/ray/ray_current_cluster
    fi
    echo "ray-cluster: stopped" ;;
  *) echo "usage: ray-cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
