#!/usr/bin/env bash
# S3 benchmark (loopback Garage), measured in one run:
#  1. upload throughput: `backupctl sync` copying a snapshot's archive from a
#     directory target to the S3 target, against `aws s3 cp` of the same file
#     (the ordinary S3 client, same part size and concurrency);
#  2. the wall-time cost of two targets (dir + S3) against one (dir) for `run`.
# Usage: bench/s3.sh [SIZE_MIB]   (default 512; needs garage, aws CLI, b3sum)
# BACKUPCTL_BIN overrides the binary (default: target/release/backupctl, built if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${1:-512}
BIN=${BACKUPCTL_BIN:-$ROOT/target/release/backupctl}
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release --quiet)
command -v aws >/dev/null || { echo "bench: needs the aws CLI (pip install awscli)" >&2; exit 1; }
[[ -f $ROOT/target/services/garage.env ]] || "$ROOT/scripts/services/garage.sh" start
"$ROOT/scripts/services/garage.sh" start >/dev/null 2>&1
# shellcheck disable=SC1091
source "$ROOT/target/services/garage.env"

W=$(mktemp -d "${TMPDIR:-/tmp}/backupctl-s3bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
RUN=bench-$(date +%s)-$$
mkdir -p "$W/src" "$W/conf/policies"
head -c $((SIZE_MIB << 20)) /dev/urandom > "$W/src/data.bin"

export BENCH_KEY=$BACKUPCTL_TEST_S3_KEY_ID BENCH_SECRET=$BACKUPCTL_TEST_S3_SECRET
s3target() { # name prefix
  cat <<T
[targets.$1]
type = "s3"
bucket = "$BACKUPCTL_TEST_S3_BUCKET"
prefix = "$2"
region = "$BACKUPCTL_TEST_S3_REGION"
endpoint = "$BACKUPCTL_TEST_S3_ENDPOINT"
location = "garage"
access_key_id_env = "BENCH_KEY"
secret_access_key_env = "BENCH_SECRET"
part_size_mib = 16
parts_in_flight = 4
T
}
{
  echo "state_dir = \"$W/state\""
  for d in one two sync; do printf '[targets.dir-%s]\ntype = "fs"\npath = "%s"\nlocation = "office"\ncreate = true\n' "$d" "$W/t-$d"; done
  s3target s3-two "$RUN/two/"
  s3target s3-sync "$RUN/sync/"
} > "$W/conf/backupctl.toml"
policy() { # name targets...
  local name=$1; shift
  local list; list=$(printf '"%s",' "$@"); list=${list%,}
  printf 'targets = [%s]\n[retention]\ndaily = 1\n[[sources]]\nname = "data"\ntype = "files"\npath = "%s"\n' "$list" "$W/src" > "$W/conf/policies/$name.toml"
}
policy one dir-one
policy two dir-two s3-two
policy sync dir-sync
B() { "$BIN" -q --config "$W/conf/backupctl.toml" "$@" >/dev/null; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }

t0=$(now); B run one; t1=$(now); B run two; t2=$(now)
one=$(secs "$t0" "$t1"); two=$(secs "$t1" "$t2")

# Upload: an archive already on a directory target, copied to S3 by sync.
B run sync
policy sync dir-sync s3-sync
archive=$(ls "$W"/t-sync/sync/archives/*.tar.zst)
t0=$(now); B sync sync; t1=$(now)
ours=$(secs "$t0" "$t1")

export AWS_ACCESS_KEY_ID=$BACKUPCTL_TEST_S3_KEY_ID AWS_SECRET_ACCESS_KEY=$BACKUPCTL_TEST_S3_SECRET
export AWS_DEFAULT_REGION=$BACKUPCTL_TEST_S3_REGION AWS_CONFIG_FILE=$W/aws-config
aws configure set default.s3.multipart_chunksize 16MB
aws configure set default.s3.max_concurrent_requests 4
t0=$(now)
aws --endpoint-url "$BACKUPCTL_TEST_S3_ENDPOINT" s3 cp --only-show-errors "$archive" "s3://$BACKUPCTL_TEST_S3_BUCKET/$RUN/awscli/data.tar.zst"
t1=$(now)
cli=$(secs "$t0" "$t1")

bytes=$(stat -c %s "$archive")
mibs() { echo "$bytes / 1048576 / $1" | bc -l; }
printf 'archive: %d MiB (incompressible)\n' $((bytes >> 20))
printf 'upload  backupctl sync dir->s3: %6.2f s  %7.1f MiB/s\n' "$ours" "$(mibs "$ours")"
printf 'upload  aws s3 cp            : %6.2f s  %7.1f MiB/s\n' "$cli" "$(mibs "$cli")"
printf 'upload  ratio backupctl/aws  : %6.2f (wall time; < 1 is faster)\n' "$(echo "$ours / $cli" | bc -l)"
printf 'run     one target (dir)     : %6.2f s\n' "$one"
printf 'run     two targets (dir+s3) : %6.2f s\n' "$two"
printf 'run     ratio two/one        : %6.2f\n' "$(echo "$two / $one" | bc -l)"
# Clean the bucket prefix.
aws --endpoint-url "$BACKUPCTL_TEST_S3_ENDPOINT" s3 rm --recursive --only-show-errors "s3://$BACKUPCTL_TEST_S3_BUCKET/$RUN/"
