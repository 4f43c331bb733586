# Shared helpers for scripts/services/*.sh (sourced, not run).
# A service lives in .services/<name>/ and writes .services/<name>.env.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SERVICES=$ROOT/.services

# A free TCP port on 127.0.0.1 (the kernel picks it; tiny race until the server binds).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null && return
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 30000))
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "$p"; return; }
  done
  echo "no free port found" >&2; return 1
}

# Random password of 24 alphanumerics.
random_password() { head -c 64 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 24; }

# Kill the process whose pid is in $1 (if alive) and wait for it to go away.
kill_pidfile() {
  local f=$1 pid
  [[ -f $f ]] || return 0
  pid=$(head -n1 "$f")
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
