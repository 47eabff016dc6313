#!/bin/bash
# Installs what is missing, builds, and runs the tests. Run as root (loop devices, mounts,
# package installs). Exits non-zero if anything failed. It ends with a table of the suites (name,
# PASS or FAIL, seconds), the total time, and, always last, the line "N passed, N failed".
#
#   scripts/run-tests.sh            every test: the full tier (what CI runs)
#   scripts/run-tests.sh --quick    the quick tier: unit tests, the integration tests on the local
#                                   store and two ext4 round trips on it (the cache off, and a log
#                                   export); no S3 server, no sanitizer, lock-analysis or fuzzing
#                                   builds
#   scripts/run-tests.sh --help
#
# The S3 store is tested against a real S3-compatible server on 127.0.0.1 that
# tests/scripts/s3_server.sh starts and stops (see tests/scripts/README-s3.md); while that script
# does not exist, the S3 variants are skipped and this says so.
#
# Environment:
#   S3BLOCK_BUILD        the build directory (default build/ in this checkout)
#   S3BLOCK_TEST_LOGS    where each suite's full output goes (default $S3BLOCK_BUILD/test-logs)
#   S3BLOCK_TEST_S3_PORT the S3 server's port (default 9340)
#   S3BLOCK_SKIP_EXT4=1  skip the ext4 round trips (they need root, /dev/fuse and loop devices)
#   S3BLOCK_SKIP_SANITIZERS=1  skip the ASan+UBSan and TSan builds and runs (build/asan, build/tsan)
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed -n 's/^# \{0,1\}//p'; }
quick=0
for arg in "$@"; do
  case "$arg" in
  --quick) quick=1 ;;
  -h | --help) usage; exit 0 ;;
  *) echo "$(basename "$0"): unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

logs=${S3BLOCK_TEST_LOGS:-$S3BLOCK_BUILD/test-logs}
# The key of the compressed and encrypted set below: made fresh by this script, removed at exit.
ext4_key=$(mktemp /tmp/s3block-ext4-key.XXXXXX) && head -c 32 /dev/urandom >"$ext4_key"
# Plugin parameter sets the ext4 round trip runs with, one line each (the integration suite has
# its own list in tests/integration/nbdkit_fixture.cc).
ext4_param_sets=(
  "cache=false"
  "cache=false compression=zstd encryption=aes-256-gcm key-file=$ext4_key"
  "cache=true cache-size=256K dirty-size=64K"    # the cache, smaller than the working set
  # Blocks larger than ext4's: its writes are parts of blocks, kept apart and merged later.
  "block-size=64K cache-size=2M dirty-size=512K"
  # Log-structured: every write of ext4 reaching the log as sent, then through a small cache
  # with the blocks compressed and encrypted inside the segments.
  "layout=log cache=false"
  "layout=log cache-size=1M compression=zstd encryption=aes-256-gcm key-file=$ext4_key"
)
# The sets of ext4_param_sets the quick tier runs on the local store (its indexes).
ext4_quick_sets=(0 4)
# Parameter sets the ext4 round trip runs with on the S3 store only: the disk cache (its directory
# made fresh by this script, removed at exit), under a small block cache so that reads reach it.
ext4_disk_cache=$(mktemp -d /tmp/s3block-ext4-diskcache.XXXXXX)
ext4_s3_param_sets=(
  "cache-size=1M disk-cache=$ext4_disk_cache,256M compression=zstd encryption=aes-256-gcm key-file=$ext4_key"
  "layout=log cache-size=1M disk-cache=$ext4_disk_cache,256M compression=zstd encryption=aes-256-gcm key-file=$ext4_key"
)
# Scripts in tests/scripts/ that take the backend to test ("local" or "s3") as their argument and
# read S3BLOCK_TEST_S3_* for s3, with any further arguments after the backend; one line each. A
# script not in this checkout is left out.
backend_scripts=(
  admin_cli_basics.sh
  admin_cli_image.sh
  admin_cli_served.sh
  admin_cli_verify.sh
  admin_cli_incomplete.sh
  crash.sh
  "crash.sh log"
  crash_ext4.sh
  log_layout.sh
  snapshots.sh
  tls_nbd_x509.sh
  tls_nbd_psk.sh
)
# Of the scripts above, those that also take a layout after the backend ("blocks", the default,
# or "log"): each also runs on log exports, as one more suite per backend.
log_layout_scripts=(
  admin_cli_basics.sh
  admin_cli_image.sh
  admin_cli_served.sh
  admin_cli_verify.sh
  admin_cli_incomplete.sh
)
# Scripts in tests/scripts/ that need the S3 server and take no argument; one line each.
s3_scripts=(
  disk_cache.sh
  lease_clock.sh
  lease_fence.sh
  lease_lost_answers.sh
  stalled_open.sh
  retry_bound.sh
  tls_s3_https.sh
)
# Scripts in tests/scripts/ for the local store alone, with no argument; one line each.
local_scripts=(
  disk_full.sh
  docker.sh
  export_bounds.sh
  local_hostile_blocks.sh
  local_hostile_lock.sh
  local_hostile_metadata.sh
  local_hostile_blocks_dir.sh
  local_hostile_torn_read.sh
  package.sh
  run_server_stop.sh
)

passed=0
failed=0
started=$(date +%s)
if [ $quick = 1 ]; then tier=quick; else tier=full; fi
# One entry per suite, for the table at the end.
suite_names=()
suite_results=()
suite_seconds=()

# Runs one suite: "$1" names it, the rest is the command. Its output goes to a log file; a
# failure shows the end of it.
suite() {
  local name=$1 log t0 rc secs result
  shift
  log="$logs/$(printf '%s' "$name" | tr -c 'A-Za-z0-9_.-' '_').log"
  t0=$(date +%s)
  echo "==> $name"
  ("$@") >"$log" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  if [ $rc -eq 0 ]; then
    passed=$((passed + 1))
    result=PASS
    echo "    PASS $name (${secs}s)"
  else
    failed=$((failed + 1))
    result=FAIL
    echo "    FAIL $name (exit $rc, ${secs}s); the end of $log:"
    tail -n 150 "$log" | sed 's/^/    | /'
  fi
  suite_names+=("$name")
  suite_results+=("$result")
  suite_seconds+=("$secs")
}

# Ends the run: a table of the suites (result and seconds before the name, which may be long),
# the total time, and the counts as the last line.
finish() {
  local i
  echo
  printf '%-6s %7s  %s\n' result seconds suite
  for i in "${!suite_names[@]}"; do
    printf '%-6s %7s  %s\n' "${suite_results[i]}" "${suite_seconds[i]}" "${suite_names[i]}"
  done
  echo "total time: $(($(date +%s) - started))s ($tier tier); logs in $logs"
  echo "$passed passed, $failed failed"
  [ $failed -eq 0 ]
  exit
}

# --- Install and build: a failure here is one failed suite, and nothing else can run. ---
install_and_build() {
  s3b_install_missing $S3BLOCK_BUILD_PACKAGES $S3BLOCK_TEST_PACKAGES && s3b_build
}
mkdir -p "$logs" 2>/dev/null || { logs=$(mktemp -d /tmp/s3block-test-logs.XXXXXX); }
s3_script=$S3BLOCK_REPO/tests/scripts/s3_server.sh
s3_port=${S3BLOCK_TEST_S3_PORT:-9340}
s3_dir=
s3_available=0
s3_stop() {
  if [ -n "$s3_dir" ]; then
    bash "$s3_script" stop "$s3_dir" "$s3_port" >>"$logs/S3_server_stop.log" 2>&1
    rm -rf "$s3_dir"
    s3_dir=
  fi
  s3_available=0
}
trap 's3_stop; rm -rf "$ext4_key" "$ext4_disk_cache"' EXIT
trap 'exit 130' INT TERM
suite "install and build" install_and_build
if [ $failed -ne 0 ]; then finish; fi

ctest_run() { ctest --test-dir "$S3BLOCK_BUILD" --output-on-failure --timeout 300 -j "$(nproc)" "$@"; }
ext4=$S3BLOCK_REPO/tests/scripts/ext4_roundtrip.sh
ext4_local() {  # PARAMS: the ext4 round trip on a fresh local store
  local scratch
  scratch=$(mktemp -d /tmp/s3block-ext4-store.XXXXXX)
  # shellcheck disable=SC2086
  suite "ext4 round trip, local store, $1" env S3BLOCK_PLUGIN="$S3BLOCK_PLUGIN" \
    "$ext4" "store=$scratch" $1
  rm -rf "$scratch"
}

# --- The quick tier: what needs no S3 server and no extra builds. ---
if [ $quick = 1 ]; then
  suite "unit tests" ctest_run -L unit
  suite "integration tests, local store" ctest_run -L integration -E '/s3_'
  if [ "${S3BLOCK_SKIP_EXT4:-0}" != 1 ]; then
    for i in "${ext4_quick_sets[@]}"; do ext4_local "${ext4_param_sets[i]}"; done
  fi
  finish
fi

# --- The S3 server, if this checkout has the script that provides one. ---
# tests/scripts/s3_server.sh start DIR PORT prints "export S3BLOCK_TEST_S3_...=..." lines;
# stop DIR PORT ends it.
if [ -f "$s3_script" ]; then
  s3_dir=$(mktemp -d /tmp/s3block-s3.XXXXXX)
  s3_env=$(mktemp)
  start_s3() { bash "$s3_script" start "$s3_dir" "$s3_port" >"$s3_env"; }
  suite "S3 server start" start_s3
  if grep -q '^export S3BLOCK_TEST_S3_' "$s3_env"; then
    # shellcheck disable=SC1090
    . "$s3_env"
    s3_available=1
    # From here on the S3 tests (unit and integration) must run, not skip.
    export S3BLOCK_TEST_REQUIRE_S3=1
  fi
  rm -f "$s3_env"
else
  echo "==> no tests/scripts/s3_server.sh: the S3 variants are skipped"
fi

# --- The suites. ---
suite "unit tests" ctest_run -L unit
if [ $s3_available = 1 ]; then
  suite "integration tests, local store" ctest_run -L integration -E '/s3_'
  suite "integration tests, S3 store" ctest_run -L integration -R '/s3_'
else
  suite "integration tests, local store" ctest_run -L integration -E '/s3_'
fi

ext4_s3() {  # PARAMS: the ext4 round trip on a fresh prefix of the S3 server
  # The secret goes in a file (secret-key=+FILE), out of ps and of every log.
  local secret_file
  secret_file=$(mktemp)
  printf '%s' "$S3BLOCK_TEST_S3_SECRET_KEY" >"$secret_file"
  # shellcheck disable=SC2086
  suite "ext4 round trip, S3 store, $1" env S3BLOCK_PLUGIN="$S3BLOCK_PLUGIN" \
    "$ext4" "store=s3://$S3BLOCK_TEST_S3_BUCKET/ext4-$(date +%s)-$$" \
    "endpoint=$S3BLOCK_TEST_S3_ENDPOINT" "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" \
    "secret-key=+$secret_file" $1
  rm -f "$secret_file"
}
if [ "${S3BLOCK_SKIP_EXT4:-0}" != 1 ]; then
  for params in "${ext4_param_sets[@]}"; do
    ext4_local "$params"
    if [ $s3_available = 1 ]; then ext4_s3 "$params"; fi
  done
  if [ $s3_available = 1 ]; then
    for params in "${ext4_s3_param_sets[@]}"; do ext4_s3 "$params"; done
  fi
fi

for entry in "${backend_scripts[@]}"; do
  read -r script more <<<"$entry"
  path=$S3BLOCK_REPO/tests/scripts/$script
  [ -f "$path" ] || continue
  # shellcheck disable=SC2086
  suite "$script local${more:+ $more}" env S3BLOCK_BUILD="$S3BLOCK_BUILD" bash "$path" local $more
  if [ $s3_available = 1 ]; then
    # shellcheck disable=SC2086
    suite "$script s3${more:+ $more}" env S3BLOCK_BUILD="$S3BLOCK_BUILD" bash "$path" s3 $more
  fi
  [[ " ${log_layout_scripts[*]} " == *" $script "* ]] || continue
  suite "$script local log" env S3BLOCK_BUILD="$S3BLOCK_BUILD" bash "$path" local log
  if [ $s3_available = 1 ]; then
    suite "$script s3 log" env S3BLOCK_BUILD="$S3BLOCK_BUILD" bash "$path" s3 log
  fi
done

for script in "${local_scripts[@]}"; do
  path=$S3BLOCK_REPO/tests/scripts/$script
  [ -f "$path" ] || continue
  suite "$script" env S3BLOCK_BUILD="$S3BLOCK_BUILD" bash "$path"
done

if [ $s3_available = 1 ]; then
  for script in "${s3_scripts[@]}"; do
    path=$S3BLOCK_REPO/tests/scripts/$script
    [ -f "$path" ] || continue
    suite "$script" env S3BLOCK_BUILD="$S3BLOCK_BUILD" bash "$path"
  done
fi

# Reliability: faults injected between the plugin and S3, sanitizer builds, the lock analysis,
# fuzzing.
if [ $s3_available = 1 ] && [ -f "$S3BLOCK_REPO/tests/scripts/faults.sh" ]; then
  suite "faults.sh s3" env S3BLOCK_BUILD="$S3BLOCK_BUILD" bash "$S3BLOCK_REPO/tests/scripts/faults.sh"
  suite "faults.sh s3 log" env S3BLOCK_BUILD="$S3BLOCK_BUILD" bash "$S3BLOCK_REPO/tests/scripts/faults.sh" log
fi
if [ "${S3BLOCK_SKIP_SANITIZERS:-0}" != 1 ] && [ -f "$S3BLOCK_REPO/tests/scripts/sanitizers.sh" ]; then
  suite "ASan+UBSan: unit and local integration tests" \
    bash "$S3BLOCK_REPO/tests/scripts/sanitizers.sh" address "$S3BLOCK_BUILD/asan"
  suite "TSan: concurrency tests" bash "$S3BLOCK_REPO/tests/scripts/sanitizers.sh" thread "$S3BLOCK_BUILD/tsan"
fi
if [ -f "$S3BLOCK_REPO/tests/scripts/thread_safety.sh" ]; then
  suite "thread safety: clang lock analysis build, its unit tests" \
    bash "$S3BLOCK_REPO/tests/scripts/thread_safety.sh" "$S3BLOCK_BUILD/thread-safety"
fi
if [ -f "$S3BLOCK_REPO/tests/scripts/fuzz.sh" ]; then
  suite "fuzz (libFuzzer, 20 s a target)" bash "$S3BLOCK_REPO/tests/scripts/fuzz.sh" "$S3BLOCK_BUILD/fuzz"
fi

s3_stop
finish
