#!/bin/bash
# Builds the tests with a sanitizer in a build directory of its own and runs them:
#
#   tests/scripts/sanitizers.sh address [BUILD_DIR]   ASan+UBSan: the unit tests and the
#                                                     integration tests on the local store
#   tests/scripts/sanitizers.sh thread [BUILD_DIR]    TSan: the concurrency tests (cache, volume,
#                                                     file store: the target concurrency_tests)
#
# BUILD_DIR defaults to build/asan or build/tsan of this checkout. The plugin is loaded by an
# uninstrumented nbdkit, so the sanitizer's runtime is preloaded into it (LD_PRELOAD, inherited by
# the nbdkit the integration tests start). Any sanitizer report fails the run: UBSan does not
# recover (-fno-sanitize-recover), ASan and TSan stop at the first report with exit code 66.
# Environment: SANITIZER_JOBS (build and test jobs, default nproc).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
kind=${1:-}
jobs=${SANITIZER_JOBS:-$(nproc 2>/dev/null || echo 2)}

case "$kind" in
address) build=${2:-$repo/build/asan}; runtime=libasan.so ;;
thread) build=${2:-$repo/build/tsan}; runtime=libtsan.so ;;
*) die "usage: $0 address|thread [BUILD_DIR]" ;;
esac

cmake -S "$repo" -B "$build" -DS3BLOCK_SANITIZE="$kind" -DCMAKE_BUILD_TYPE=Debug >&2 ||
  die "cmake configure failed"
if [ "$kind" = address ]; then
  targets=(--target unit_tests --target integration_tests --target nbdkit-s3block-plugin)
else
  targets=(--target concurrency_tests)
fi
cmake --build "$build" -j "$jobs" "${targets[@]}" >&2 || die "build failed"

preload=$(${CXX:-g++} -print-file-name="$runtime")
[ -f "$preload" ] || die "no $runtime for the compiler (${CXX:-g++})"
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:exitcode=66:detect_leaks=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:exitcode=66:second_deadlock_stack=1}

rc=0
if [ "$kind" = address ]; then
  # The S3 store's tests run where the S3 server is configured; the rest always.
  ctest --test-dir "$build" --output-on-failure --timeout 600 -j "$jobs" -L unit || rc=1
  # In nbdkit, leak checking is off: nbdkit does not free a connection that is still open when it
  # exits, and everything the plugin allocated for it hangs off that (the library's own leaks are
  # checked by the unit tests above). AStorePathThatIsAFile and StartupFailuresNameTheParameter
  # are left out here only: an nbdkit that fails in config or get_ready this way under the
  # preloaded ASan runtime deadlocks at exit in libp11-kit's finalizer (freelocale under glibc's
  # setlocale lock), outside any code of ours; they run in the ordinary integration suite.
  ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" LD_PRELOAD=$preload ctest --test-dir "$build" \
    --output-on-failure --timeout 600 -j "$jobs" -L integration -E '/s3_|AStorePathThatIsAFile|StartupFailuresNameTheParameter' || rc=1
else
  # The cache, volume and file-store tests (tests/CMakeLists.txt: concurrency_tests).
  "$build/tests/concurrency_tests" || rc=1
fi
[ $rc -eq 0 ] || die "$kind: a test failed or the sanitizer reported an error (see above)"
echo "sanitizers: $kind: every test passed with no report"
