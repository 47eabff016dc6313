#!/bin/bash
# Builds with clang's lock analysis as errors (-DS3BLOCK_THREAD_SAFETY=ON: -Wthread-safety
# -Werror=thread-safety) in a build directory of its own, then runs that build's unit tests:
#
#   tests/scripts/thread_safety.sh [BUILD_DIR]      # default build/thread-safety of this checkout
#
# The build is the check: a member GUARDED_BY a mutex touched without it, a function that
# REQUIRES a lock called without it, a lock taken twice or left held (src/util/mutex.h) fails it.
# The library, the plugin, the s3block command and the unit tests are built; among the unit tests,
# ThreadSafety.AnUnguardedWriteFailsTheBuild is the control that the analysis is on in this build.
# Environment: THREAD_SAFETY_JOBS (build and test jobs, default nproc). Needs clang.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
build=${1:-$repo/build/thread-safety}
jobs=${THREAD_SAFETY_JOBS:-$(nproc 2>/dev/null || echo 2)}

require_tool clang++

CC=clang CXX=clang++ cmake -S "$repo" -B "$build" -DS3BLOCK_THREAD_SAFETY=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2 || die "cmake configure failed"
cmake --build "$build" -j "$jobs" --target s3block --target nbdkit-s3block-plugin \
  --target s3block-admin --target unit_tests --target util_tests >&2 ||
  die "the build failed: a lock annotation is broken (see the errors above)"

# The S3 store's tests run where the S3 server is configured; the rest always.
ctest --test-dir "$build" --output-on-failure --timeout 300 -j "$jobs" -L unit ||
  die "a unit test failed in the clang build"
echo "thread safety: the clang build with the lock analysis passed, and its unit tests"
