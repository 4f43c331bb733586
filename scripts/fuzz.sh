#!/usr/bin/env bash
# Fuzz the parsers of everything backupctl reads from storage targets and
# from its configuration (fuzz/, README "Fuzzing"). Not run in CI. Targets
# (format v2): config, manifest (manifests, signatures, file index records,
# listings), pack (extent lists, pack indexes, frames, the stream reader),
# archive_tar (the tar unpacker).
#
#   scripts/fuzz.sh              every target for 300 s, one after another
#   scripts/fuzz.sh 1200         every target for 20 minutes
#   scripts/fuzz.sh 60 manifest  only the named targets
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). It works on the
# stable toolchain: cargo-fuzz passes nightly `-Z` flags, which
# RUSTC_BOOTSTRAP=1 allows. Builds are release with debug assertions (so
# integer overflow panics) and, by default, without a sanitizer
# (FUZZ_SANITIZER=address also builds on stable, the runtime ships with it,
# but it compiles the C dependencies instrumented too and runs ~2x slower;
# the code fuzzed is safe Rust over libc calls).
#
# Each target runs as one job (the machine's cores are shared). New corpus
# entries go to fuzz/target/corpus/<target> (not committed); the committed
# seeds (fuzz/corpus/<target>) are read as well, and past findings
# (fuzz/regressions/<target>)
# are replayed first. A crash, panic, timeout or memory blow-up is saved to
# fuzz/artifacts/<target>/ and makes the script exit 1 once every target ran;
# reproduce one with `RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a -s none <target>
# <file>` (or run fuzz/target/<host>/release/<target> <file>), then copy it to
# fuzz/regressions/<target>/ with its fix.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
shift || true
all=(config manifest pack archive_tar)
targets=("${@:-${all[@]}}")
sanitizer=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1
flags=(-O -a -s "$sanitizer")
# archive_tar extracts into a fresh directory per input: on tmpfs,
# deep trees cost microseconds instead of disk writes.
if [[ -z ${TMPDIR:-} && -d /dev/shm && -w /dev/shm ]]; then
  export TMPDIR=/dev/shm
fi

# archive_tar stays small: a tar of N bytes can be a directory N/2 levels deep,
# which is correct but slow to make, and such inputs would crowd the corpus.
declare -A max_len=([config]=8192 [manifest]=16384 [pack]=65536 [archive_tar]=12288)

command -v cargo-fuzz >/dev/null || {
  echo "fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 2
}
echo "fuzz.sh: building (sanitizer: $sanitizer)" >&2
cargo fuzz build "${flags[@]}"
bin_dir=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release

failed=()
summary=()
for t in "${targets[@]}"; do
  [[ -n ${max_len[$t]:-} ]] || { echo "fuzz.sh: unknown target $t (known: ${all[*]})" >&2; exit 2; }
  work=fuzz/target/corpus/$t
  artifacts=fuzz/artifacts/$t
  mkdir -p "$work" "$artifacts" "fuzz/corpus/$t" "fuzz/regressions/$t"
  before=$(find "$artifacts" -type f | wc -l)
  log=fuzz/target/fuzz-$t.log
  echo "fuzz.sh: $t for ${seconds}s (log: $log)" >&2
  rc=0
  # Past findings first, each run once (they may be larger than max_len).
  regressions=(fuzz/regressions/$t/*)
  if [[ -e ${regressions[0]} ]]; then
    "$bin_dir/$t" -artifact_prefix="$artifacts/" "${regressions[@]}" >"$log" 2>&1 || rc=$?
  fi
  # The binary `cargo fuzz run` would start, without rebuilding between targets.
  ((rc == 0)) && "$bin_dir/$t" "$work" "fuzz/corpus/$t" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len="${max_len[$t]}" -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >>"$log" 2>&1 || rc=$?
  after=$(find "$artifacts" -type f | wc -l)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  corpus=$(find "$work" -type f | wc -l)
  line="$t: ${execs:-?} executions, ${rate:-?} exec/s, ${cov:-cov: ?}, corpus $corpus"
  if [[ $rc -ne 0 || $after -gt $before ]]; then
    line="$line: FAILED (exit $rc, $((after - before)) new artifacts in $artifacts)"
    failed+=("$t")
    grep -m1 -A12 -E "panicked|ERROR: libFuzzer|==ERROR" "$log" >&2 || tail -20 "$log" >&2
  fi
  summary+=("$line")
  echo "fuzz.sh: $line" >&2
done

echo "fuzz.sh: summary"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "fuzz.sh: findings in: ${failed[*]}" >&2
  exit 1
fi
