#!/usr/bin/env bash
# The embedded default, backupctl's main job on the demo shop: back up its
# files (fixtures/site) and its SQLite database (fixtures/app/app.db) in one
# policy to two local directory targets (under .demo/), list the snapshots,
# then verify them (re-hash, test-restore, database integrity and row counts).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
export BACKUPCTL_CONFIG=fixtures/demo/backupctl.toml
set -x
target/debug/backupctl run
target/debug/backupctl list
target/debug/backupctl verify
