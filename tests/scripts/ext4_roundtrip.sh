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
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
export_name=${EXT4_EXPORT:-test_device}
size=${EXT4_SIZE:-1G}
data_mb=${EXT4_DATA_MB:-24}

[ $# -ge 1 ] || die "usage: $0 STORE_ARGS... (for example store=/tmp/scratch)"
require_root "loop devices and mount"
[ -f "$plugin" ] || die "no plugin at $plugin (build first, or set S3BLOCK_PLUGIN)"
require_tool nbdkit nbdfuse nbdinfo losetup mkfs.ext4 e2fsck fusermount3 sha256sum mountpoint blockdev
[ -c /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse)"

mnt=$work/mnt
files=$work/files
mkdir -p "$mnt" "$files"
uri="nbd+unix:///$export_name?socket=$sock"

serve() { start_nbdkit "$plugin" "$@" "size=$size"; }
attach() { attach_block_device "$uri" "$mnt"; }
detach() { detach_block_device; }

log "store: $(redact "$@"); export $export_name, size $size"
serve "$@"

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
serve "$@"
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
