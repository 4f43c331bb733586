#!/usr/bin/env bash
# Test PostgreSQL server: `start` (or restart) on a free 127.0.0.1 port with a fresh
# data directory in .services/postgres/, `stop` to kill it. Writes
# .services/postgres.env with BACKUPCTL_TEST_PG_{HOST,PORT,USER,PASSWORD}.
# The `backup` role is a superuser with a password (scram-sha-256 over TCP).
# Uses Debian's packages (postgresql, postgresql-client); no system service.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
NAME=postgres
DIR=$SERVICES/$NAME
ENV=$SERVICES/$NAME.env

bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [[ -x $d/initdb ]] && { echo "$d"; return; }; done
  command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
  echo "postgres.sh: initdb not found; install the Debian package postgresql (scripts/install-deps.sh)" >&2
  return 1
}

# Run as the postgres user when we are root (the server refuses root).
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop() {
  if [[ -f $DIR/data/postmaster.pid ]]; then
    local bin; bin=$(bindir)
    as_pg "$bin/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    kill_pidfile "$DIR/data/postmaster.pid"
  fi
  rm -f "$ENV"
}

start() {
  stop
  local bin port pw
  bin=$(bindir)
  port=$(free_port)
  pw=$(random_password)
  rm -rf "$DIR"
  mkdir -p "$DIR/run"
  printf '%s\n' "$pw" >"$DIR/pwfile"
  chmod 600 "$DIR/pwfile"
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown -R postgres "$DIR"
    # The server's user must be able to reach its directory.
    local d=$DIR
    while [[ $d != / ]]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
  fi
  as_pg "$bin/initdb" -D "$DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; exit 1; }
  as_pg "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $DIR/run -c fsync=off -c max_connections=200" start >/dev/null \
    || { cat "$DIR/server.log" >&2; exit 1; }
  as_pg "$bin/psql" -X -q -h "$DIR/run" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -v pw="$pw" <<'SQL'
CREATE ROLE backup LOGIN SUPERUSER PASSWORD :'pw';
SQL
  cat >"$ENV" <<ENVEOF
export BACKUPCTL_TEST_PG_HOST=127.0.0.1
export BACKUPCTL_TEST_PG_PORT=$port
export BACKUPCTL_TEST_PG_USER=backup
export BACKUPCTL_TEST_PG_PASSWORD=$pw
ENVEOF
  echo "postgres: listening on 127.0.0.1:$port (env: $ENV)"
}

case ${1:-} in
  start) start ;;
  stop) stop; echo "postgres: stopped" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
