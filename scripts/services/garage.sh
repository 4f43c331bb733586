#!/usr/bin/env bash
# Garage (S3-compatible object store, https://garagehq.deuxfleurs.fr) for the
# test suite: one node on loopback, single replica, one bucket and one key.
#
#   scripts/services/garage.sh start [DIR]   start (or reuse) an instance
#   scripts/services/garage.sh stop  [DIR]   stop it (data and config are kept)
#   scripts/services/garage.sh wipe  [DIR]   stop it and delete DIR
#
# DIR defaults to .services/garage (the shared instance; its variables
# also go to .services/garage.env). Tests that stop the server mid-run
# start a private instance in their own DIR, so parallel tests don't interfere.
# `start` on a DIR that was started before reuses its config: same port, same
# key, same data (a test can stop and restart "the same" server).
# DIR/env holds `export VAR=value` lines:
#   BACKUPCTL_TEST_S3_ENDPOINT, _BUCKET, _REGION, _KEY_ID, _SECRET, and
#   BACKUPCTL_TEST_GARAGE_DIR (the instance directory).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cmd=${1:-}
DIR=${2:-$ROOT/.services/garage}
mkdir -p "$(dirname "$DIR")"
DIR=$(cd "$(dirname "$DIR")" && pwd)/$(basename "$DIR")
SHARED=$ROOT/.services/garage
GARAGE=${GARAGE_BIN:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}
CONF=$DIR/garage.toml
PIDFILE=$DIR/garage.pid

log() { echo "garage.sh: $*" >&2; }
die() { log "$*"; exit 1; }

running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

rand_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

g() { "$GARAGE" -c "$CONF" "$@"; }

write_config() {
  mkdir -p "$DIR/meta" "$DIR/data"
  local s3_port rpc_port
  s3_port=$(free_port); rpc_port=$(free_port)
  while [[ $rpc_port == "$s3_port" ]]; do rpc_port=$(free_port); done
  cat > "$CONF" <<TOML
metadata_dir = "$DIR/meta"
data_dir = "$DIR/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(rand_hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
TOML
  chmod 600 "$CONF"
  cat > "$DIR/instance" <<VARS
S3_PORT=$s3_port
KEY_ID=GK$(rand_hex 12)
SECRET=$(rand_hex 32)
BUCKET=backupctl-test
VARS
}

start() {
  [[ -x $GARAGE ]] || die "garage not found (run scripts/install-deps.sh, or set GARAGE_BIN)"
  [[ -f $CONF && -f $DIR/instance ]] || write_config
  # shellcheck disable=SC1091
  source "$DIR/instance"
  if ! running; then
    RUST_LOG=${GARAGE_LOG:-warn} setsid "$GARAGE" -c "$CONF" server >>"$DIR/garage.log" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
  fi
  local i
  for ((i = 0; i < 150; i++)); do
    running || die "garage exited; see $DIR/garage.log"
    g status >/dev/null 2>&1 && port_open "$S3_PORT" && break
    sleep 0.2
  done
  ((i < 150)) || die "garage did not become ready in 30 s; see $DIR/garage.log"
  if [[ ! -f $DIR/provisioned ]]; then
    local node
    node=$(g node id -q 2>/dev/null | cut -d@ -f1)
    [[ -n $node ]] || die "could not read the node id"
    g layout assign -z local -c 1G "$node" >/dev/null
    g layout apply --version 1 >/dev/null
    for ((i = 0; i < 50; i++)); do
      g key import --yes -n backupctl-test "$KEY_ID" "$SECRET" >/dev/null 2>&1 && break
      g key info "$KEY_ID" >/dev/null 2>&1 && break
      sleep 0.2
    done
    g key info "$KEY_ID" >/dev/null 2>&1 || die "could not create the access key"
    g bucket info "$BUCKET" >/dev/null 2>&1 || g bucket create "$BUCKET" >/dev/null
    g bucket allow --read --write --owner "$BUCKET" --key "$KEY_ID" >/dev/null
    touch "$DIR/provisioned"
  fi
  cat > "$DIR/env" <<ENV
export BACKUPCTL_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export BACKUPCTL_TEST_S3_BUCKET=$BUCKET
export BACKUPCTL_TEST_S3_REGION=garage
export BACKUPCTL_TEST_S3_KEY_ID=$KEY_ID
export BACKUPCTL_TEST_S3_SECRET=$SECRET
export BACKUPCTL_TEST_GARAGE_DIR=$DIR
ENV
  [[ $DIR == "$SHARED" ]] && cp "$DIR/env" "$ROOT/.services/garage.env"
  log "ready: http://127.0.0.1:$S3_PORT bucket $BUCKET (pid $(cat "$PIDFILE"), dir $DIR)"
}

stop() {
  if running; then
    local pid; pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  wipe) stop; rm -rf "$DIR"; [[ $DIR == "$SHARED" ]] && rm -f "$ROOT/.services/garage.env"; true ;;
  *) echo "usage: $0 start|stop|wipe [DIR]" >&2; exit 2 ;;
esac
