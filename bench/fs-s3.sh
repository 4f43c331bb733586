#!/usr/bin/env bash
# What a second, S3 target costs a run: `backupctl run` of the same tree to
# one directory target, and to that directory plus an S3 target (Garage on
# loopback, started by scripts/services/garage.sh), interleaved, fresh
# targets each time; prints the walls and the ratio (goal <= 1.2x).
#
#   bench/fs-s3.sh DATASET_DIR [ROUNDS]      default 2 rounds
#
# BCTL names the binary (default: the release build, built if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DS=$(cd "${1:?usage: fs-s3.sh DATASET_DIR [ROUNDS]}" && pwd)
ROUNDS=${2:-2}
B=${BCTL:-${CARGO_TARGET_DIR:-$ROOT/target}/release/backupctl}
[[ -x $B ]] || (cd "$ROOT" && cargo build --release --quiet)
"$ROOT/scripts/services/garage.sh" start >/dev/null
# shellcheck disable=SC1091
source "$ROOT/.services/garage.env"
W=$(mktemp -d "${TMPDIR:-/tmp}/backupctl-fss3.XXXXXX")
export S3_KEY=$BACKUPCTL_TEST_S3_KEY_ID S3_SECRET=$BACKUPCTL_TEST_S3_SECRET
tar -cf - -C "$DS" . >/dev/null   # warm the page cache
config() { # DIR WITH_S3
  mkdir -p "$1/policies"
  printf 'state_dir = "state"\n[targets.disk]\ntype = "fs"\npath = "disk"\ncreate = true\nlocation = "here"\n' >"$1/backupctl.toml"
  local targets='"disk"'
  if [[ $2 == 1 ]]; then
    printf '[targets.cloud]\ntype = "s3"\nbucket = "%s"\nprefix = "%s/"\nregion = "%s"\nendpoint = "%s"\nlocation = "away"\naccess_key_id_env = "S3_KEY"\nsecret_access_key_env = "S3_SECRET"\n' \
      "$BACKUPCTL_TEST_S3_BUCKET" "bench-$(basename "$1")-$RANDOM" "$BACKUPCTL_TEST_S3_REGION" "$BACKUPCTL_TEST_S3_ENDPOINT" >>"$1/backupctl.toml"
    targets='"disk", "cloud"'
  fi
  printf 'targets = [%s]\n[retention]\nlast = 1\n[[sources]]\nname = "site"\ntype = "files"\npath = "%s"\n' "$targets" "$DS" >"$1/policies/site.toml"
}
declare -a one two
for r in $(seq 1 "$ROUNDS"); do
  for kind in 0 1; do
    d=$W/r$r-$kind; config "$d" $kind
    s=$(date +%s.%N); "$B" -q -c "$d/backupctl.toml" run >/dev/null 2>"$d.stderr"; e=$(date +%s.%N)
    t=$(python3 -c "print(round($e-$s,2))")
    if [[ $kind == 0 ]]; then one+=("$t"); else two+=("$t"); fi
    echo "round $r: $([[ $kind == 0 ]] && echo 'fs     ' || echo 'fs + s3') $t s"
  done
done
python3 - "${one[*]}" "${two[*]}" <<'PY'
import sys, statistics as st
a=[float(x) for x in sys.argv[1].split()]; b=[float(x) for x in sys.argv[2].split()]
print(f"median: fs {st.median(a):.2f} s, fs + s3 {st.median(b):.2f} s: {st.median(b)/st.median(a):.2f}x")
PY
rm -rf "$W"
