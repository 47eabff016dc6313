#!/bin/bash
# Builds the libFuzzer targets of tests/fuzz (clang, ASan+UBSan) and runs each for a short while,
# starting from the seeds in tests/fuzz/corpus/TARGET.
#
#   tests/scripts/fuzz.sh [BUILD_DIR]      # default build/fuzz of this checkout
#
# Environment:
#   FUZZ_SECONDS   how long each target runs (default 20)
#   FUZZ_TARGETS   which targets (default: export_meta params config s3_xml)
#   FUZZ_JOBS      build jobs (default: nproc)
# Prints one line per target: "fuzz TARGET: N executions, K corpus entries" and a total. A crash,
# a leak, a sanitizer report or a broken property fails the script; the input that did it is
# kept under BUILD_DIR/fuzz-artifacts/ and its path printed. Needs clang and libclang-rt-14-dev.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
build=${1:-$repo/build/fuzz}
seconds=${FUZZ_SECONDS:-20}
targets=${FUZZ_TARGETS:-"export_meta params config s3_xml"}
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}

require_tool clang++

CC=clang CXX=clang++ cmake -S "$repo" -B "$build" -DS3BLOCK_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$build.configure.log" 2>&1 ||
  { cat "$build.configure.log" >&2; die "cmake configure failed"; }
rm -f "$build.configure.log"
cmake --build "$build" -j "$jobs" --target fuzzers >&2 || die "building the fuzzers failed"

artifacts=$build/fuzz-artifacts
mkdir -p "$artifacts"
total=0
failed=0
for t in $targets; do
  bin=$build/tests/fuzz/fuzz_$t
  [ -x "$bin" ] || die "no fuzzer $bin"
  corpus=$build/fuzz-corpus/$t
  mkdir -p "$corpus"
  log=$build/fuzz-$t.log
  # The seeds come second: new inputs go to the first directory, the repository stays as it is.
  "$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$t-" "$corpus" "$repo/tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  entries=$(find "$corpus" -type f | wc -l)
  runs=${runs:-0}
  total=$((total + runs))
  if [ $rc -ne 0 ]; then
    failed=$((failed + 1))
    echo "fuzz $t: FAILED (exit $rc) after $runs executions; the end of $log:"
    tail -n 40 "$log"
    ls -1 "$artifacts"/"$t"-* 2>/dev/null | sed 's/^/  input kept: /'
  else
    echo "fuzz $t: $runs executions, $entries corpus entries"
  fi
done
echo "fuzz total: $total executions over $(echo $targets | wc -w) targets, $failed failed"
[ $failed -eq 0 ]
