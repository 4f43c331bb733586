#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian machine (idempotent):
# command-line tools for manual-restore tests, PostgreSQL and MariaDB servers
# (started later by scripts/services/*, never as system services), and Garage,
# the S3-compatible server, built from crates.io once and cached in ~/.cargo/bin;
# tzdata for the deployment test, which runs across a daylight-saving change;
# Python's prometheus_client for the metrics test; headless Chromium for the
# drill report test (it renders the HTML report).
set -euo pipefail

need_apt=()
for pkg_cmd in zstd:zstd b3sum:b3sum sqlite3:sqlite3 postgresql:/usr/lib/postgresql mariadb-server:mariadbd mariadb-client:mariadb-dump tzdata:/usr/share/zoneinfo/Europe/Berlin chromium:chromium; do
  pkg=${pkg_cmd%%:*}; cmd=${pkg_cmd#*:}
  if [[ $cmd == /* ]]; then [[ -e $cmd ]] || need_apt+=("$pkg"); else command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg"); fi
done
if ((${#need_apt[@]})); then
  echo "install-deps: apt-get install ${need_apt[*]}" >&2
  SUDO=; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Python's prometheus_client (from PyPI): tests/operator.rs parses the
# --metrics-file output with its text-format parser.
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
  echo "install-deps: pip install prometheus_client" >&2
  python3 -m pip install --quiet prometheus_client 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages prometheus_client
fi

GARAGE_VERSION=2.5.0
if ! command -v garage >/dev/null 2>&1 || ! garage --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
  echo "install-deps: building garage $GARAGE_VERSION from crates.io (about 12-20 minutes on 2 cores, once)" >&2
  cargo install garage --version "$GARAGE_VERSION" --locked --quiet
fi
