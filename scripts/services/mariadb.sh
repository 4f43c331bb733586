#!/usr/bin/env bash
# Test MariaDB server: `start` (or restart) on a free 127.0.0.1 port with a fresh
# data directory in .services/mariadb/, `stop` to kill it. Writes
# .services/mariadb.env with BACKUPCTL_TEST_MYSQL_{HOST,PORT,USER,PASSWORD}.
# The `backup` user has all privileges (with grant option) and a password.
# Uses Debian's packages (mariadb-server, mariadb-client); no system service.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
NAME=mariadb
DIR=$SERVICES/$NAME
ENV=$SERVICES/$NAME.env

stop() {
  kill_pidfile "$DIR/mariadbd.pid"
  rm -f "$ENV"
}

start() {
  stop
  command -v mariadbd >/dev/null 2>&1 || [[ -x /usr/sbin/mariadbd ]] || {
    echo "mariadb.sh: mariadbd not found; install the Debian package mariadb-server (scripts/install-deps.sh)" >&2; exit 1; }
  local port pw user=()
  port=$(free_port)
  pw=$(random_password)
  rm -rf "$DIR"
  mkdir -p "$DIR/data"
  [[ $(id -u) -eq 0 ]] && user=(--user=root)
  PATH=$PATH:/usr/sbin mariadb-install-db --no-defaults "${user[@]}" --datadir="$DIR/data" \
    --auth-root-authentication-method=normal --skip-test-db >"$DIR/install.log" 2>&1 \
    || { cat "$DIR/install.log" >&2; exit 1; }
  setsid "$(PATH=$PATH:/usr/sbin command -v mariadbd)" --no-defaults "${user[@]}" --datadir="$DIR/data" \
    --bind-address=127.0.0.1 --port="$port" --socket="$DIR/mariadbd.sock" \
    --pid-file="$DIR/mariadbd.pid" --log-error="$DIR/server.log" \
    --innodb-flush-log-at-trx-commit=0 --skip-name-resolve </dev/null >/dev/null 2>&1 &
  local ok=
  for _ in $(seq 300); do
    if mariadb --no-defaults -uroot --socket="$DIR/mariadbd.sock" -e 'SELECT 1' >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
  done
  [[ -n $ok ]] || { echo "mariadb.sh: server did not start" >&2; cat "$DIR/server.log" >&2; exit 1; }
  mariadb --no-defaults -uroot --socket="$DIR/mariadbd.sock" <<SQL
CREATE USER 'backup'@'%' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON *.* TO 'backup'@'%' WITH GRANT OPTION;
CREATE USER 'backup'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON *.* TO 'backup'@'localhost' WITH GRANT OPTION;
SQL
  cat >"$ENV" <<ENVEOF
export BACKUPCTL_TEST_MYSQL_HOST=127.0.0.1
export BACKUPCTL_TEST_MYSQL_PORT=$port
export BACKUPCTL_TEST_MYSQL_USER=backup
export BACKUPCTL_TEST_MYSQL_PASSWORD=$pw
ENVEOF
  echo "mariadb: listening on 127.0.0.1:$port (env: $ENV)"
}

case ${1:-} in
  start) start ;;
  stop) stop; echo "mariadb: stopped" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
