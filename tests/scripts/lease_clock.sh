#!/bin/bash
# Machines whose clocks disagree by minutes share a bucket, and the lease still keeps one writer
# per export: its expiry is a time of the S3 server's clock (its Date headers), not of theirs.
# S3 itself accepts requests from clocks up to 15 minutes off, so such machines work otherwise.
#
# libfaketime sets the wall clocks: server A's runs 3 minutes behind, and A holds the export
# (lease-timeout=20, renewed every 5 s). On this machine's own clock A's lease would have expired
# minutes ago; it must still be refused:
#  1. to server B (this machine's clock), at once and again after A has renewed its lease;
#  2. to the admin command with a clock 3 minutes ahead (`s3block resize`, exit status 4), and
#     with the real clock;
#  3. once A stops, B takes the export over at once (A released it) and reads A's data.
#
#   tests/scripts/lease_clock.sh    (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
require_built "$plugin" "$admin"
require_s3_env
require_tool nbdkit
require_libnbd_python
# libfaketime preloaded by hand (the faketime command would stay between us and nbdkit): the
# wall clock only; the steady clock, which times requests and the lease's validity here, stays.
libfaketime=$(dpkg -L libfaketime 2>/dev/null | grep '/libfaketimeMT\.so\.1$' | head -n 1)
[ -n "$libfaketime" ] || die "libfaketime is not installed"
export FAKETIME_DONT_FAKE_MONOTONIC=1
skewed() {  # SKEW COMMAND...: runs COMMAND with its wall clock SKEW ("-180s") off
  local skew=$1
  shift
  LD_PRELOAD=$libfaketime FAKETIME=$skew "$@"
}
[ "$(skewed +180s date +%s)" -ge $(($(date +%s) + 170)) ] || die "libfaketime does not set the clock"

prefix=clock-$$-$RANDOM
show_log_on_failure "$work/admin-*.log"

store=s3://$S3BLOCK_TEST_S3_BUCKET/$prefix
export AWS_ACCESS_KEY_ID=$S3BLOCK_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3BLOCK_TEST_S3_SECRET_KEY

start() {  # NAME SKEW PARAMS...: starts nbdkit on $work/NAME.sock with its wall clock SKEW off
  local name=$1 skew=$2
  shift 2
  start_nbdkit -n "$name" -e "LD_PRELOAD=$libfaketime" -e "FAKETIME=$skew" "$plugin" \
    "store=$store" "endpoint=$S3BLOCK_TEST_S3_ENDPOINT" size=16M "$@"
}
stop() { stop_nbdkit -n "$1"; }  # NAME: SIGTERM, and the server must exit 0
# b_is_refused WHEN: server B, on this machine's clock, must not get the export.
b_is_refused() {
  start b +0s
  if nbd_io "$work/b.sock" "pass" 2>/dev/null; then
    die "$1: server B got the export that server A (clock 3 minutes behind) holds"
  fi
  stop b
  grep -q 'is in use by' "$work/b.log" || die "$1: B was refused, but not for A's lease"
  : >"$work/b.log"
}
# admin_is_refused SKEW WHEN: s3block resize with its clock SKEW off must exit 4.
admin_is_refused() {
  local rc=0
  skewed "$1" "$admin" --store "$store" --endpoint "$S3BLOCK_TEST_S3_ENDPOINT" \
    resize disk 32M >"$work/admin-$1.log" 2>&1 || rc=$?
  [ "$rc" = 4 ] || die "$2: s3block resize (clock $1) exited $rc, not 4 (refused): $(cat "$work/admin-$1.log")"
  grep -q 'is in use by' "$work/admin-$1.log" || die "$2: s3block was refused, but not for A's lease"
}

log "server A, its clock 3 minutes behind, holds the export and stores block 0"
start a -180s lease-timeout=20
nbd_io "$work/a.sock" "h.pwrite(b'A' * 4096, 0); h.flush()"
b_is_refused "A's first lease"
admin_is_refused +180s "A's first lease"
admin_is_refused +0s "A's first lease"
log "waiting for A to renew its lease (every 5 s)"
sleep 12
b_is_refused "A's renewed lease"
admin_is_refused +180s "A's renewed lease"
nbd_io "$work/a.sock" "h.pwrite(b'a' * 4096, 4096); h.flush()"   # A still writes
log "A stops and releases the export; B takes it over at once"
stop a
start b +0s
got=$(nbd_io "$work/b.sock" "sys.stdout.write(h.pread(8192, 0)[::4096].decode())")
stop b
[ "$got" = Aa ] || die "B reads '$got' in blocks 0 and 1, not A's flushed 'Aa'"
log "PASS"
