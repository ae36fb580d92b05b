#!/usr/bin/env bash
# A local S3-compatible server (moto in server mode) on loopback, for trying clipline against s3://
# paths without a cloud account.
#
#   infra/local/s3.sh start DIR [BUCKET]   # writes DIR/s3.env with the endpoint and test credentials
#   source DIR/s3.env                      # then use storage.endpoint_url: $CLIPLINE_S3_ENDPOINT
#   infra/local/s3.sh stop DIR             # stops the server it started, by pid
set -euo pipefail

command=${1:?usage: s3.sh start|stop DIR [BUCKET]}
dir=${2:?usage: s3.sh start|stop DIR [BUCKET]}
python_bin=${PYTHON_BIN:-python3}

start() {
  local bucket=${1:-clipline} port
  mkdir -p "$dir"
  port=$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  "$python_bin" -m moto.server -H 127.0.0.1 -p "$port" >"$dir/s3.log" 2>&1 &
  echo $! >"$dir/s3.pid"
  cat >"$dir/s3.env" <<ENV
export CLIPLINE_S3_ENDPOINT=http://127.0.0.1:$port
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=local-test-key
export AWS_SECRET_ACCESS_KEY=local-test-secret
export AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
ENV
  # shellcheck disable=SC1091
  source "$dir/s3.env"
  for _ in $(seq 60); do
    "$python_bin" -c "import boto3; boto3.client('s3').create_bucket(Bucket='$bucket')" 2>/dev/null && break
    sleep 0.5
  done
  echo "s3: moto on $CLIPLINE_S3_ENDPOINT, bucket s3://$bucket; env in $dir/s3.env"
}

stop() {
  [ -f "$dir/s3.pid" ] || return 0
  local pid
  pid=$(cat "$dir/s3.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$dir/s3.pid"
  echo "s3: stopped"
}

case "$command" in
  start) shift 2; start "$@" ;;
  stop) stop ;;
  *) echo "usage: s3.sh start|stop DIR [BUCKET]" >&2; exit 2 ;;
esac
