#!/bin/bash
# The specification's scenario, for real: an ext4 file system on the plugin's export survives a
# restart of nbdkit.
#
#   tests/scripts/ext4_roundtrip.sh STORE_ARGS...
#   tests/scripts/ext4_roundtrip.sh store=/tmp/scratch
#   tests/scripts/ext4_roundtrip.sh store=s3://bucket/prefix endpoint=http://127.0.0.1:7480 \
#       access-key=... secret-key=...
#
# nbdkit serves the export on a unix socket; nbdfuse turns it into a file (MOUNTDIR/nbd); a loop
# device on that file gets mkfs.ext4, is mounted, and receives hello.txt and some megabytes of
# files whose sha256 sums are kept aside. Then everything is unmounted and detached, nbdkit is
# stopped and started again on the same store, and the file system must pass `e2fsck -fn` and
# hold every file with its checksum.
#
# Needs root (loop devices, mount), /dev/fuse, nbdkit, nbdfuse, losetup, mkfs.ext4, e2fsck.
# Give it a scratch store: the export is formatted. Environment:
#   S3BLOCK_PLUGIN   the plugin (default: build/nbdkit-s3block-plugin.so of this checkout)
#   EXT4_EXPORT      export name (default test_device); it must be empty (all holes)
#   EXT4_SIZE        size of the new export (default 1G)
#   EXT4_DATA_MB     megabytes of file data to write (default 24)
# Exits 0 when every check passes; every exit path unmounts, detaches and stops what it started.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
plugin=${S3BLOCK_PLUGIN:-$repo/build/nbdkit-s3block-plugin.so}
export_name=${EXT4_EXPORT:-test_device}
size=${EXT4_SIZE:-1G}
data_mb=${EXT4_DATA_MB:-24}

log() { echo "ext4_roundtrip: $(date +%H:%M:%S) $*"; }
# The arguments as they may be shown: a secret-key= value never is.
shown() { printf '%s\n' "$*" | sed -E 's/(secret-key=)[^ ]*/\1(hidden)/g'; }
die() { echo "ext4_roundtrip: FAILED: $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: $0 STORE_ARGS... (for example store=/tmp/scratch)"
[ "$(id -u)" = 0 ] || die "must run as root (loop devices and mount)"
[ -f "$plugin" ] || die "no plugin at $plugin (build first, or set S3BLOCK_PLUGIN)"
for tool in nbdkit nbdfuse nbdinfo losetup mkfs.ext4 e2fsck fusermount3 sha256sum mountpoint; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
[ -c /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse)"

work=$(mktemp -d /tmp/s3block-ext4.XXXXXX)
sock=$work/nbd.sock
fusedir=$work/fuse
mnt=$work/mnt
files=$work/files
mkdir -p "$fusedir" "$mnt" "$files"
uri="nbd+unix:///$export_name?socket=$sock"

nbdkit_pid=
fuse_pid=
loop=

# Undoes whatever is set up, innermost first. Safe to run at any point and more than once.
teardown() {
  if mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt" || true; fi
  if [ -n "$loop" ]; then losetup -d "$loop" || true; loop=; fi
  if mountpoint -q "$fusedir"; then fusermount3 -u "$fusedir" || fusermount3 -uz "$fusedir" || true; fi
  if [ -n "$fuse_pid" ]; then
    kill "$fuse_pid" 2>/dev/null || true
    wait "$fuse_pid" 2>/dev/null || true
    fuse_pid=
  fi
  if [ -n "$nbdkit_pid" ]; then
    kill "$nbdkit_pid" 2>/dev/null || true
    wait "$nbdkit_pid" 2>/dev/null || true
    nbdkit_pid=
  fi
}

on_exit() {
  local rc=$?
  teardown
  if [ $rc -ne 0 ] && [ -f "$work/nbdkit.log" ]; then
    echo "---- nbdkit log ----" >&2
    tail -n 50 "$work/nbdkit.log" >&2
    echo "---- end ----" >&2
  fi
  rm -rf "$work"
  exit $rc
}
trap on_exit EXIT
trap 'echo "ext4_roundtrip: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT TERM HUP

# Waits up to $2 seconds for the file $1 to exist and not be empty.
wait_for_file() {
  local i
  for ((i = 0; i < $2 * 20; i++)); do
    [ -s "$1" ] && return 0
    sleep 0.05
  done
  return 1
}

start_nbdkit() {
  rm -f "$work/nbdkit.pid" "$sock"
  echo "\$ nbdkit $plugin $(shown "$@") size=$size" >>"$work/nbdkit.log"
  nbdkit -f -U "$sock" -P "$work/nbdkit.pid" "$plugin" "$@" "size=$size" \
    </dev/null >>"$work/nbdkit.log" 2>&1 &
  nbdkit_pid=$!
  wait_for_file "$work/nbdkit.pid" 60 || die "nbdkit did not start"
}

stop_nbdkit() {
  kill -TERM "$nbdkit_pid"
  local rc=0
  wait "$nbdkit_pid" || rc=$?
  nbdkit_pid=
  [ $rc -eq 0 ] || die "nbdkit exited with status $rc on SIGTERM"
}

# nbdkit -> nbdfuse file -> loop device.
attach() {
  rm -f "$work/nbdfuse.pid"
  nbdfuse -P "$work/nbdfuse.pid" "$fusedir" "$uri" </dev/null >>"$work/nbdfuse.log" 2>&1 &
  fuse_pid=$!
  wait_for_file "$work/nbdfuse.pid" 60 || die "nbdfuse did not start: $(cat "$work/nbdfuse.log")"
  [ -f "$fusedir/nbd" ] || die "nbdfuse shows no $fusedir/nbd"
  loop=$(losetup --find --show "$fusedir/nbd")
  log "attached $uri as $fusedir/nbd on $loop"
}

# Everything written reaches nbdkit before this returns: the loop device and the nbdfuse file are
# flushed (nbdfuse turns fsync into an NBD flush), then both are taken apart.
detach() {
  blockdev --flushbufs "$loop"
  losetup -d "$loop"
  loop=
  sync "$fusedir/nbd"
  fusermount3 -u "$fusedir"
  wait "$fuse_pid" || die "nbdfuse exited with an error: $(cat "$work/nbdfuse.log")"
  fuse_pid=
}

log "store: $(shown "$@"); export $export_name, size $size"
start_nbdkit "$@"

# The export must be fresh: this is about to format it.
map=$(nbdinfo --map "$uri") || die "nbdinfo --map failed"
if echo "$map" | awk '$3 != 3 { bad = 1 } END { exit !bad }'; then
  die "export $export_name already holds data; give a scratch store"
fi

attach
log "mkfs.ext4"
mkfs.ext4 -q -F -L s3block "$loop"
mount "$loop" "$mnt"

log "writing hello.txt and $data_mb MB of files"
echo "hello" >"$mnt/hello.txt"
mkdir -p "$mnt/dir/sub"
for i in 1 2 3; do
  head -c $((data_mb * 1024 * 1024 / 4)) /dev/urandom >"$mnt/dir/big$i.bin"
done
head -c $((data_mb * 1024 * 1024 / 4 - 12345)) /dev/urandom >"$mnt/dir/sub/odd-size.bin"
for i in $(seq 1 200); do
  head -c $((i * 37)) /dev/urandom >"$mnt/dir/sub/small-$i"
done
(cd "$mnt" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum) \
  >"$files/sums"
count=$(wc -l <"$files/sums")
log "wrote $count files"
[ "$count" -eq 205 ] || die "expected 205 files, wrote $count"

umount "$mnt"
detach
log "stopping nbdkit"
stop_nbdkit

log "starting nbdkit again on the same store"
start_nbdkit "$@"
attach
log "e2fsck -fn"
e2fsck -fn "$loop" >"$work/e2fsck.log" 2>&1 || {
  cat "$work/e2fsck.log" >&2
  die "e2fsck reports errors"
}
mount "$loop" "$mnt"
[ "$(cat "$mnt/hello.txt")" = "hello" ] || die "hello.txt does not say hello"
(cd "$mnt" && sha256sum --quiet -c "$files/sums") || die "checksums differ after the restart"
(cd "$mnt" && find . -type f ! -path './lost+found/*' | wc -l) >"$work/count"
[ "$(cat "$work/count")" -eq "$count" ] || die "file count changed: $(cat "$work/count") != $count"
umount "$mnt"
detach
stop_nbdkit
log "PASS: e2fsck clean, $count files with matching checksums after the restart"
