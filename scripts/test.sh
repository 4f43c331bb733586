#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests
# need, starts the test services on loopback (S3-compatible Garage,
# PostgreSQL, MariaDB) in temporary directories, runs formatting and lint
# checks and every test, and stops the services again.
#
#   scripts/test.sh              everything
#   scripts/test.sh core_        extra arguments go to `cargo test` (a filter here)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

services=()
for s in scripts/services/*.sh; do
  name=$(basename "$s" .sh)
  [[ $name == lib ]] && continue   # shared functions, not a service
  services+=("$name")
done
stop_services() {
  for name in "${services[@]}"; do
    "scripts/services/$name.sh" stop >/dev/null 2>&1 || true
  done
}
trap stop_services EXIT
for name in "${services[@]}"; do
  echo "test.sh: starting $name" >&2
  "scripts/services/$name.sh" start
  # shellcheck disable=SC1090
  source ".services/$name.env"
done
# From here on a test whose service is missing fails instead of skipping.
export BACKUPCTL_TEST_REQUIRE_SERVICES=1

echo "test.sh: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test.sh: cargo clippy" >&2
cargo clippy --all-targets --quiet -- -D warnings
echo "test.sh: cargo test" >&2
cargo test --quiet "$@"
