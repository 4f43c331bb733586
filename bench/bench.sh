#!/usr/bin/env bash
# Benchmark: backupctl against plain tar|zstd on the same data, in the same run
# (these machines are noisy: compare ratios, not absolute times).
#
#   bench/bench.sh [SIZE_MB]      default 1024
#
# Measures (each twice, best of two, page cache warm for both sides):
#   backup : backupctl run (one fs target)  vs  tar -cf - DIR | zstd -3 -T2 > out
#   restore: backupctl restore              vs  zstd -d -T2 -c out | tar -xf -
#   peak RSS of backupctl (from /usr/bin/time)
# Optional: BENCH_PEERS=1 also times restic and borgbackup (Debian packages).
#
# Restore outputs go to fresh directories; the previous run's outputs are
# removed at the END of a run, never right before a measurement (creating files
# soon after deleting a large tree is much slower on these machines).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-1024}
W=bench/work
DATA=$W/data-$SIZE_MB
RUN=$PWD/$W/run-$(date +%s)
mkdir -p "$W" "$RUN"
command -v /usr/bin/time >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }

[[ -d $DATA ]] || python3 bench/gen_dataset.py "$DATA" "$SIZE_MB"
cargo build --release --quiet
B=${CARGO_TARGET_DIR:-$PWD/target}/release/backupctl
DATA_ABS=$(cd "$DATA" && pwd)

mkdir -p "$RUN/cfg/policies"
cat > "$RUN/cfg/backupctl.toml" <<TOML
state_dir = "state"
[targets.one]
type = "fs"
path = "target-one"
location = "bench"
create = true
[targets.two]
type = "fs"
path = "target-two"
location = "bench-2"
create = true
TOML
cat > "$RUN/cfg/policies/bench.toml" <<TOML
targets = ["one"]
[retention]
last = 1
[[sources]]
name = "data"
type = "files"
path = "$DATA_ABS"
TOML

# timed NAME CMD...: wall seconds and max RSS (KB) into $RUN/NAME.{wall,rss}
timed() {
  local name=$1; shift
  /usr/bin/time -f '%e %M' -o "$RUN/$name.time" "$@" >/dev/null 2>"$RUN/$name.log" || { cat "$RUN/$name.log"; exit 1; }
  read -r wall rss < "$RUN/$name.time"
  echo "$wall" > "$RUN/$name.wall"; echo "$rss" > "$RUN/$name.rss"
}
best() { sort -g "$@" | head -1; }
ratio() { python3 -c "print(f'{float($1)/float($2):.2f}')"; }

echo "bench: warming the page cache" >&2
tar -cf - -C "$DATA" . > /dev/null

for i in 1 2; do
  echo "bench: backup round $i" >&2
  timed base-backup-$i sh -c "tar -cf - -C '$DATA' . | zstd -3 -T2 -q > '$RUN/base.tar.zst'"
  # A fresh target each time, so every round really writes the archive.
  rm -rf "$RUN/cfg/target-one" "$RUN/cfg/state"
  timed bc-backup-$i "$B" -q -c "$RUN/cfg/backupctl.toml" run
done
# Two targets vs one (same data; fresh targets).
sed -i 's/^targets = \["one"\]/targets = ["one", "two"]/' "$RUN/cfg/policies/bench.toml"
rm -rf "$RUN/cfg/target-one" "$RUN/cfg/state"
timed bc-backup-two "$B" -q -c "$RUN/cfg/backupctl.toml" run
sed -i 's/^targets = \["one", "two"\]/targets = ["one"]/' "$RUN/cfg/policies/bench.toml"

for i in 1 2; do
  echo "bench: restore round $i" >&2
  mkdir -p "$RUN/base-restore-$i"
  timed base-restore-$i sh -c "zstd -d -T2 -q -c '$RUN/base.tar.zst' | tar -xf - -C '$RUN/base-restore-$i'"
  timed bc-restore-$i "$B" -q -c "$RUN/cfg/backupctl.toml" restore bench --to "$RUN/bc-restore-$i"
done

if [[ ${BENCH_PEERS:-0} == 1 ]]; then
  command -v restic >/dev/null && command -v borg >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic borgbackup >/dev/null; }
  export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
  restic init -q -r "$RUN/restic" && timed restic-backup restic -q -r "$RUN/restic" backup "$DATA"
  borg init -e none "$RUN/borg" && timed borg-backup borg create --compression zstd,3 "$RUN/borg::a" "$DATA"
  timed restic-restore restic -q -r "$RUN/restic" restore latest --target "$RUN/restic-restore"
  mkdir -p "$RUN/borg-restore" && timed borg-restore sh -c "cd '$RUN/borg-restore' && borg extract '$RUN/borg::a'"
fi

bb=$(best "$RUN"/base-backup-*.wall); cb=$(best "$RUN"/bc-backup-[12].wall)
br=$(best "$RUN"/base-restore-*.wall); cr=$(best "$RUN"/bc-restore-*.wall)
c2=$(cat "$RUN/bc-backup-two.wall")
rss_b=$(best -r "$RUN"/bc-backup-[12].rss | tail -1); rss_b=$(sort -g "$RUN"/bc-backup-*.rss | tail -1)
rss_r=$(sort -g "$RUN"/bc-restore-*.rss | tail -1)
size=$(du -sm "$DATA" | cut -f1); arch=$(du -sm "$RUN/base.tar.zst" | cut -f1)
echo
echo "dataset: $size MB ($DATA), tar|zstd archive: $arch MB"
printf '%-44s %8s %8s %7s\n' "measure" "base s" "ours s" "ratio"
printf '%-44s %8s %8s %7s\n' "backup  (tar|zstd -3 -T2  vs  backupctl run)" "$bb" "$cb" "$(ratio "$cb" "$bb")x"
printf '%-44s %8s %8s %7s\n' "restore (zstd -d|tar -x  vs  backupctl restore)" "$br" "$cr" "$(ratio "$cr" "$br")x"
printf '%-44s %8s %8s %7s\n' "two fs targets vs one (backupctl run)" "$cb" "$c2" "$(ratio "$c2" "$cb")x"
echo "backupctl peak RSS: backup $((rss_b / 1024)) MB, restore $((rss_r / 1024)) MB"
if [[ ${BENCH_PEERS:-0} == 1 ]]; then
  echo "restic backup $(cat "$RUN/restic-backup.wall")s ($(ratio "$(cat "$RUN/restic-backup.wall")" "$bb")x base), restore $(cat "$RUN/restic-restore.wall")s ($(ratio "$(cat "$RUN/restic-restore.wall")" "$br")x base)"
  echo "borg   backup $(cat "$RUN/borg-backup.wall")s ($(ratio "$(cat "$RUN/borg-backup.wall")" "$bb")x base), restore $(cat "$RUN/borg-restore.wall")s ($(ratio "$(cat "$RUN/borg-restore.wall")" "$br")x base)"
fi
# Leftovers of earlier runs go now, after measuring.
for old in "$PWD/$W"/run-*; do [[ $old == "$RUN" ]] || rm -rf "$old"; done
