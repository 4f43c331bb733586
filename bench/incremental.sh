#!/usr/bin/env bash
# Benchmark: what a second night costs. backupctl, restic and borg back up
# the same website dataset, then the same tree after one simulated day of
# change (../shared/bench/gen_dataset.py --mutate 1), in the same run.
#
#   bench/incremental.sh [SIZE_MB]      default 1000
#
# Reports, per tool: repository bytes after day 1, bytes day 2 added, wall
# time of each backup, the day-2 restore time, the time of a full integrity
# check (`backupctl verify` against `restic check --read-data` and `borg check
# --verify-data`) and peak RSS of backup and restore; times as ratios against
# `tar -cf - DIR | zstd -3 -T2` of the same tree measured in this run.
# DAY1=DIR DAY2=DIR run it on other data (the 200k tiny files, say).
#
# Repositories and restores go to a fresh run directory; earlier runs are
# removed at the END (creating files soon after deleting a large tree is much
# slower on these machines).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-1000}
GEN=${GEN:-../shared/bench/gen_dataset.py}
[[ -f $GEN ]] || GEN=bench/gen_dataset.py
W=bench/work
RUN=$PWD/$W/inc-$(date +%s)
DAY1=${DAY1:-$PWD/$W/site-$SIZE_MB}
DAY2=${DAY2:-$PWD/$W/site-$SIZE_MB-day2}
mkdir -p "$W" "$RUN"
command -v /usr/bin/time >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }
command -v restic >/dev/null && command -v borg >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic borgbackup >/dev/null; }

[[ -d $DAY1 ]] || python3 "$GEN" "$DAY1" --size-mb "$SIZE_MB" --seed 1
if [[ ! -d $DAY2 ]]; then
  cp -a "$DAY1" "$DAY2.tmp" && python3 "$GEN" "$DAY2.tmp" --mutate 1 --seed 2 && mv "$DAY2.tmp" "$DAY2"
fi
cargo build --release --quiet
B=${CARGO_TARGET_DIR:-$PWD/target}/release/backupctl

# The backed-up path is the same on both days (restic and borg key their
# parent snapshot and file cache on it): a copy of day 1, brought to day 2
# with rsync (which keeps the mtimes of unchanged files).
SRC=$RUN/site
cp -a "$DAY1" "$SRC"
command -v rsync >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null; }

mkdir -p "$RUN/cfg/policies"
cat > "$RUN/cfg/backupctl.toml" <<TOML
state_dir = "state"
[targets.one]
type = "fs"
path = "target-one"
location = "bench"
create = true
TOML
cat > "$RUN/cfg/policies/site.toml" <<TOML
targets = ["one"]
[retention]
last = 5
[[sources]]
name = "site"
type = "files"
path = "$SRC"
TOML

timed() {
  local name=$1; shift
  /usr/bin/time -f '%e %M' -o "$RUN/$name.time" "$@" >/dev/null 2>"$RUN/$name.log" || { cat "$RUN/$name.log"; exit 1; }
}
wall() { cut -d' ' -f1 "$RUN/$1.time"; }
rss() { echo $(( $(cut -d' ' -f2 "$RUN/$1.time") / 1024 )); }
mib() { python3 -c "print(f'{$1/1048576:.1f}')"; }
ratio() { python3 -c "print(f'{float($1)/float($2):.2f}')"; }
bytes() { du -sb "$1" | cut -f1; }

export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
restic init -q -r "$RUN/restic"
borg init -e none "$RUN/borg"

echo "bench: warming the page cache" >&2
tar -cf - -C "$DAY1" . > /dev/null; tar -cf - -C "$DAY2" . > /dev/null

for day in 1 2; do
  dir=$DAY1; [[ $day == 2 ]] && { dir=$DAY2; rsync -a --delete "$DAY2/" "$SRC/"; }
  echo "bench: day $day" >&2
  timed base-$day sh -c "tar -cf - -C '$dir' . | zstd -3 -T2 -q > '$RUN/base-$day.tar.zst'"
  timed bc-$day "$B" -q -c "$RUN/cfg/backupctl.toml" run
  echo "$(bytes "$RUN/cfg/target-one")" > "$RUN/bc-$day.bytes"
  timed restic-$day restic -q -r "$RUN/restic" backup "$SRC"
  echo "$(bytes "$RUN/restic")" > "$RUN/restic-$day.bytes"
  timed borg-$day borg create --compression zstd,3 "$RUN/borg::day$day" "$SRC"
  echo "$(bytes "$RUN/borg")" > "$RUN/borg-$day.bytes"
done

echo "bench: restores of day 2" >&2
timed base-restore sh -c "mkdir -p '$RUN/r-base' && zstd -d -T2 -q -c '$RUN/base-2.tar.zst' | tar -xf - -C '$RUN/r-base'"
timed bc-restore "$B" -q -c "$RUN/cfg/backupctl.toml" restore site --to "$RUN/r-bc"
timed restic-restore restic -q -r "$RUN/restic" restore latest --target "$RUN/r-restic"
timed borg-restore sh -c "mkdir -p '$RUN/r-borg' && cd '$RUN/r-borg' && borg extract '$RUN/borg::day2'"
echo "bench: integrity checks of everything stored" >&2
timed bc-verify "$B" -q -c "$RUN/cfg/backupctl.toml" verify site
timed restic-verify restic -q -r "$RUN/restic" check --read-data
timed borg-verify borg check --verify-data "$RUN/borg"
# The restore is the day-2 tree, byte for byte.
diff -r "$DAY2" "$RUN/r-bc/site" >/dev/null && echo "backupctl restore of day 2: identical to the tree" >&2

echo
echo "dataset: $(du -sm "$DAY1" | cut -f1) MB day 1, day 2 = --mutate 1 --seed 2; tar|zstd of day 1: $(mib "$(bytes "$RUN/base-1.tar.zst")") MiB"
printf '%-10s %12s %14s %9s %9s %9s %9s %9s %12s\n' tool "day1 MiB" "day2 +MiB" "day1 s" "day2 s" "restore s" "verify s" "RSS MB" "restore RSS"
for t in bc restic borg; do
  d1=$(cat "$RUN/$t-1.bytes"); d2=$(cat "$RUN/$t-2.bytes")
  printf '%-10s %12s %14s %9s %9s %9s %9s %9s %12s\n' "$t" "$(mib "$d1")" "$(mib $((d2 - d1)))" "$(wall $t-1)" "$(wall $t-2)" "$(wall $t-restore)" "$(wall $t-verify)" "$(rss $t-1)" "$(rss $t-restore)"
done
printf '%-10s %12s %14s %9s %9s %9s\n' "tar|zstd" "$(mib "$(bytes "$RUN/base-1.tar.zst")")" "-" "$(wall base-1)" "$(wall base-2)" "$(wall base-restore)"
echo
echo "ratios (same run):"
for t in restic borg; do
  echo "  day-2 bytes added, backupctl / $t: $(ratio $(( $(cat "$RUN/bc-2.bytes") - $(cat "$RUN/bc-1.bytes") )) $(( $(cat "$RUN/$t-2.bytes") - $(cat "$RUN/$t-1.bytes") )))x"
  echo "  full backup time,  backupctl / $t: $(ratio "$(wall bc-1)" "$(wall $t-1)")x"
  echo "  day-2 backup time, backupctl / $t: $(ratio "$(wall bc-2)" "$(wall $t-2)")x"
  echo "  restore time,      backupctl / $t: $(ratio "$(wall bc-restore)" "$(wall $t-restore)")x"
done
echo "  verify (latest snapshot, every chunk re-hashed and unpacked) / restic check --read-data (whole repository): $(ratio "$(wall bc-verify)" "$(wall restic-verify)")x"
echo "  full backup time,  backupctl / tar|zstd -3 -T2: $(ratio "$(wall bc-1)" "$(wall base-1)")x"
echo "  restore time,      backupctl / zstd -d|tar -x: $(ratio "$(wall bc-restore)" "$(wall base-restore)")x"
for old in "$PWD/$W"/inc-*; do [[ $old == "$RUN" ]] || rm -rf "$old"; done
