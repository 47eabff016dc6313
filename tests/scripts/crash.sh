#!/bin/bash
# Crashes: nbdkit is killed with SIGKILL at a random moment while blockmodel
# (tests/tools/blockmodel.cc) writes, reads back and flushes, many times over on one store. After
# every restart each unit must hold the version of its last successful flush or a newer one that
# was being written, and nothing else: no lost flush, no partial block, no temporary file read as
# data. Rounds alternate the cache on and off. On the local store it also checks that every block
# file has the full block size (a partial file never takes a block's name) and counts the
# temporary files the kills left behind (they must never be listed or read as blocks).
#
# Then, once (CRASH_EXT4=1, the default, as root), ext4: a file system is written through
# nbdfuse and a loop device, a first set of files is synced, and nbdkit is killed while more files
# are being written; after a restart, mounting replays the journal, `e2fsck -fn` must be clean,
# and the synced files must have their checksums.
#
#   tests/scripts/crash.sh local
#   tests/scripts/crash.sh s3         (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout); CRASH_ROUNDS (default 30);
# CRASH_SECONDS (default 90: no new round starts after that); CRASH_EXT4 (default 1).
# Prints "crashes survived: N" with the total bytes verified.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${S3BLOCK_BUILD:-$repo/build}
plugin=$build/nbdkit-s3block-plugin.so
model=$build/tests/blockmodel
mode=${1:-local}
rounds=${CRASH_ROUNDS:-30}
budget=${CRASH_SECONDS:-90}
do_ext4=${CRASH_EXT4:-1}

log() { echo "crash[$mode]: $(date +%H:%M:%S) $*"; }
die() { echo "crash[$mode]: FAILED: $*" >&2; exit 1; }
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
[ -f "$plugin" ] || die "no $plugin (build first)"
[ -x "$model" ] || die "no $model (build first)"

work=$(mktemp -d /tmp/s3block-crash.XXXXXX)
sock=$work/nbd.sock
fusedir=$work/fuse
mnt=$work/mnt
mkdir -p "$fusedir" "$mnt"
nbdkit_pid=
writer_pid=
fuse_pid=
loop=
ext4_writer_pid=

teardown() {
  if [ -n "$ext4_writer_pid" ]; then kill "$ext4_writer_pid" 2>/dev/null || true; wait "$ext4_writer_pid" 2>/dev/null || true; ext4_writer_pid=; fi
  if mountpoint -q "$mnt"; then umount "$mnt" 2>/dev/null || umount -l "$mnt" || true; fi
  if [ -n "$loop" ]; then losetup -d "$loop" 2>/dev/null || true; loop=; fi
  if mountpoint -q "$fusedir"; then fusermount3 -u "$fusedir" 2>/dev/null || fusermount3 -uz "$fusedir" || true; fi
  if [ -n "$fuse_pid" ]; then kill "$fuse_pid" 2>/dev/null || true; wait "$fuse_pid" 2>/dev/null || true; fuse_pid=; fi
  if [ -n "$writer_pid" ]; then kill "$writer_pid" 2>/dev/null || true; wait "$writer_pid" 2>/dev/null || true; writer_pid=; fi
  if [ -n "$nbdkit_pid" ]; then kill -9 "$nbdkit_pid" 2>/dev/null || true; wait "$nbdkit_pid" 2>/dev/null || true; nbdkit_pid=; fi
}
cleanup() {
  local rc=$?
  teardown
  show_nbdkit_log_on_failure "$rc" "$work/nbdkit.log"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

case "$mode" in
local)
  store=$work/store
  store_args=("store=$store")
  ;;
s3)
  require_s3_env
  # force=true: the killed server's lease is still in the bucket, and the operator knows its
  # holder is dead (without it the restart would wait for lease-timeout=).
  store_args=("store=s3://$S3BLOCK_TEST_S3_BUCKET/crash-$$-$(date +%s)"
    "endpoint=$S3BLOCK_TEST_S3_ENDPOINT" "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY"
    "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY" force=true)
  ;;
*) die "usage: $0 local|s3" ;;
esac

start_nbdkit() {
  rm -f "$work/nbdkit.pid" "$sock"
  echo "\$ nbdkit $plugin ${store_args[0]} $*" >>"$work/nbdkit.log"
  nbdkit -f -U "$sock" -P "$work/nbdkit.pid" "$plugin" "${store_args[@]}" size=256M "$@" \
    </dev/null >>"$work/nbdkit.log" 2>&1 &
  nbdkit_pid=$!
  wait_for_file "$work/nbdkit.pid" 60 || die "nbdkit did not start"
}
kill9_nbdkit() {
  kill -9 "$nbdkit_pid"
  wait "$nbdkit_pid" 2>/dev/null || true
  nbdkit_pid=
}

# --- Model rounds ---
uri="nbd+unix:///crash?socket=$sock"
state=$work/model.state
units=4096  # 16 MiB
survived=0
verified_bytes=0
started=$(date +%s)
for ((r = 1; r <= rounds; r++)); do
  if [ $(($(date +%s) - started)) -ge "$budget" ]; then
    log "time budget of ${budget}s used: stopping after $((r - 1)) rounds"
    break
  fi
  if ((r % 2)); then cache=cache=true; else cache=cache=false; fi
  start_nbdkit "$cache" cache-size=4M upload-threads=8
  "$model" write --uri "$uri" --state "$state" --units $units --seconds 60 --depth 16 \
    --flush-every $((RANDOM % 4 + 1)) --seed "$r" >"$work/writer.out" 2>&1 &
  writer_pid=$!
  # A random moment between 0.2 and 2.5 seconds into the run.
  sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 0.2 + 2.3 * r / 32767 }')"
  kill -0 "$writer_pid" 2>/dev/null || { cat "$work/writer.out" >&2; die "round $r: the writer ended before the kill"; }
  kill9_nbdkit
  rc=0
  wait "$writer_pid" || rc=$?
  writer_pid=
  cat "$work/writer.out"
  [ $rc -eq 0 ] || die "round $r: the writer saw lost or wrong data before the kill (exit $rc)"
  grep -q 'connection lost' "$work/writer.out" || die "round $r: the writer did not see the kill"

  if [ "$mode" = local ]; then
    blocks=$store/exports/crash/blocks
    if [ -d "$blocks" ]; then
      short=$(find "$blocks" -maxdepth 1 -type f -regex '.*/[0-9]+' ! -size 4096c | wc -l)
      [ "$short" -eq 0 ] || die "round $r: $short block files without the full block size"
      temps=$(find "$blocks" -maxdepth 1 -type f ! -regex '.*/[0-9]+' | wc -l)
      [ "$temps" -eq 0 ] || log "round $r: $temps temporary files left by the kill (never blocks)"
    fi
  fi

  start_nbdkit "$cache"
  "$model" verify --uri "$uri" --state "$state" --strict >"$work/verify.out" 2>&1 ||
    { cat "$work/verify.out" >&2; die "round $r: after kill -9 and restart, flushed data is missing or wrong"; }
  cat "$work/verify.out"
  b=$(sed -n 's/.* \([0-9]*\) bytes checked.*/\1/p' "$work/verify.out")
  l=$(sed -n 's/.* \([0-9]*\) lost, [0-9]* wrong$/\1/p' "$work/verify.out")
  [ "${l:-x}" = 0 ] || die "round $r: the verify output does not say 0 lost"
  verified_bytes=$((verified_bytes + b))
  stop_nbdkit
  survived=$((survived + 1))
done
[ $survived -ge 1 ] || die "no round ran"
log "crashes survived: $survived (kill -9 during writes; $verified_bytes bytes verified after restarts, 0 bytes lost)"

# --- ext4, once ---
if [ "$do_ext4" != 1 ]; then exit 0; fi
[ "$(id -u)" = 0 ] || die "the ext4 crash needs root (or CRASH_EXT4=0)"
for tool in nbdfuse losetup mkfs.ext4 e2fsck fusermount3 mountpoint sha256sum; do
  command -v $tool >/dev/null || die "$tool is not installed"
done
ext4_uri="nbd+unix:///ext4?socket=$sock"
attach() {
  rm -f "$work/nbdfuse.pid"
  nbdfuse -P "$work/nbdfuse.pid" "$fusedir" "$ext4_uri" </dev/null >>"$work/nbdfuse.log" 2>&1 &
  fuse_pid=$!
  wait_for_file "$work/nbdfuse.pid" 60 || die "nbdfuse did not start: $(cat "$work/nbdfuse.log")"
  loop=$(losetup --find --show "$fusedir/nbd")
}
detach_clean() {
  blockdev --flushbufs "$loop"
  losetup -d "$loop"
  loop=
  sync "$fusedir/nbd"
  fusermount3 -u "$fusedir"
  wait "$fuse_pid" || die "nbdfuse exited with an error"
  fuse_pid=
}

log "ext4: mkfs, a first set of files synced, then kill -9 while writing more"
start_nbdkit cache=true cache-size=8M
attach
mkfs.ext4 -q -F "$loop"
mount "$loop" "$mnt"
mkdir -p "$mnt/synced"
for i in $(seq 1 40); do head -c $((i * 5000 + 123)) /dev/urandom >"$mnt/synced/f$i"; done
(cd "$mnt" && find synced -type f -print0 | sort -z | xargs -0 sha256sum) >"$work/sums"
sync -f "$mnt"
# The writer keeps creating, appending and deleting files until the kill.
(
  set +e
  mkdir -p "$mnt/busy"
  i=0
  while true; do
    i=$((i + 1))
    head -c $((RANDOM * 8)) /dev/urandom >"$mnt/busy/n$i" 2>/dev/null || exit 0
    [ $((i % 5)) -eq 0 ] && rm -f "$mnt/busy/n$((i - 3))"
    [ $((i % 7)) -eq 0 ] && sync -f "$mnt" 2>/dev/null
  done
) &
ext4_writer_pid=$!
sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 1 + 2 * r / 32767 }')"
kill9_nbdkit
log "ext4: nbdkit killed; taking the dead mount apart"
kill "$ext4_writer_pid" 2>/dev/null || true
wait "$ext4_writer_pid" 2>/dev/null || true
ext4_writer_pid=
umount -l "$mnt" || true
losetup -d "$loop" 2>/dev/null || true
loop=
fusermount3 -uz "$fusedir" 2>/dev/null || true
kill "$fuse_pid" 2>/dev/null || true
wait "$fuse_pid" 2>/dev/null || true
fuse_pid=

log "ext4: restart; mount replays the journal; e2fsck -fn"
start_nbdkit cache=true cache-size=8M
attach
mount "$loop" "$mnt" || die "the file system does not mount after the crash"
(cd "$mnt" && sha256sum --quiet -c "$work/sums") || die "synced files changed or vanished after the crash"
umount "$mnt"
e2fsck -fn "$loop" >"$work/e2fsck.log" 2>&1 || { cat "$work/e2fsck.log" >&2; die "e2fsck -fn reports errors after the journal replay"; }
detach_clean
stop_nbdkit
survived=$((survived + 1))
log "ext4: e2fsck -fn clean after the journal replay; $(wc -l <"$work/sums") synced files intact"
log "crashes survived: $survived in total"
