#!/usr/bin/env bash
# The embedded default: back up the demo site in fixtures/site to two local
# directory targets (under target/), then list the snapshots.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
export BACKUPCTL_CONFIG=fixtures/demo/backupctl.toml
set -x
target/debug/backupctl run
target/debug/backupctl list
